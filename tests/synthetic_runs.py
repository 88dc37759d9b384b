"""Test helpers: synthetic StepRecords and RunArrays (no model), and a stop-after-N callback."""

from __future__ import annotations

import numpy as np

from explorer.decoding.callbacks import StopFlag
from explorer.decoding.records import StepRecord
from explorer.store.arrays import RunArrays

MASK_ID = 1


def synthetic_records(
    G: int, S: int, seed: int = 0, order: np.ndarray | None = None, vocab: int = 50
) -> list[StepRecord]:
    """S steps committing all G positions (in `order`, default a random permutation), with
    LLaDA's near-even split of G over S steps; metrics are random but valid."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(G) if order is None else np.asarray(order)
    counts = [G // S + (j < G % S) for j in range(S)]
    bounds = np.cumsum([0, *counts])
    records, masked = [], G
    for step in range(S):
        committed = np.sort(order[bounds[step] : bounds[step + 1]]).astype(np.int64)  # (n,)
        n = committed.size
        top_probs = np.sort(rng.random((n, 3), dtype=np.float32), axis=1)[:, ::-1].copy()  # (n, 3)
        top_ids = rng.integers(3, vocab, size=(n, 3)).astype(np.int64)  # (n, 3)
        confidence = rng.random(G, dtype=np.float32)  # (G,)
        records.append(
            StepRecord(
                step=step,
                block=0,
                committed=committed,
                tokens=top_ids[:, 0].copy(),
                probs=top_probs[:, 0].copy(),
                top_ids=top_ids,
                top_probs=top_probs,
                argmax=rng.integers(3, vocab, size=G).astype(np.int32),
                confidence=confidence,
                entropy=rng.random(G, dtype=np.float32) * 3,
                margin=confidence * rng.random(G, dtype=np.float32),
                masked_before=masked,
                seconds=0.0,
            )
        )
        masked -= n
    return records


def synthetic_arrays(
    G: int, S: int, seed: int = 0, order: np.ndarray | None = None, run_id: int | None = 1
) -> RunArrays:
    run = {"gen_length": G, "mask_id": MASK_ID}
    if run_id is not None:
        run["id"] = run_id
    return RunArrays.from_records(run, synthetic_records(G, S, seed, order))


class StopAfter(StopFlag):
    """Cancels a run once the step with this index has been recorded."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_step(self, record: StepRecord) -> None:
        if record.step == self.step:
            self.stop()


def replay_segments(segments: list[list], G: int, step: int) -> list[str]:
    """What the page's player shows after `step`: each position's last segment starting at or
    before it (static/components/player.js `segmentAt`); the span HTML of each position."""
    shown: list[str] = [""] * G
    starts = [-(10**9)] * G
    for position, start, span in segments:
        if starts[position] <= start <= step:
            shown[position], starts[position] = span, start
    return shown


def live_segments(prefix: RunArrays, records: list[StepRecord], token_text) -> list[list]:
    """The segments a streaming branch sends the page: its stored steps 0..k (read at RunStarted),
    then one live frame per record (explorer/ui/app.py's stream)."""
    from explorer.views.player import LivePlayer, stored_payload

    live = LivePlayer("live", prefix.gen_length, int(prefix.run["mask_id"]), token_text, "confidence")
    segments = list(stored_payload(prefix, token_text)["seg"])
    live.resume(prefix)
    for record in records:
        segments.extend(live.frame([record])["seg"])
    return segments


def span_text(span: str) -> str:
    """The text a token span shows (its escapes undone)."""
    import html
    import re

    return html.unescape(re.fullmatch(r"<span [^>]*>(.*)</span>", span, re.S).group(1))
