"""The token view's replay data: a run's states sent to the page once, in a compact form, so that
the step slider, play/pause and the arrow keys replay the run in the browser (static/components/
player.js) without asking the server.

A run is sent as *segments*: for each position, the steps at which what it shows changes (a
commit, a revision, a re-mask, a branch's edit) and the token span it shows from then on, rendered
by the one token renderer (`views.tokens.TokenContext.span`, which escapes every string). The
state after step k is, for every position, its last segment starting at or before k. A run of G
positions and E events has G + E segments, whatever its number of steps.

Each span carries what the page colours it by (`data-c` the step that wrote the token, `data-p`
its probability then, `data-h` the entropy of that position's distribution then, `data-v` its
violation score, `data-k` the story checker's verdicts on it), so changing the colouring is a
change of CSS, not a new render.

While a run streams, `LivePlayer` turns each batch of new StepRecords into new segments only
(O(new steps) a frame, never the whole run): their tooltips say what the step did (committed,
revised from what, re-masked what); the stored run's full histories replace them when it ends.

Pure: arrays or records in, a JSON-able dict out. The dict is embedded in the token view's HTML
as `<template class="player-data">` (`embed`), which browsers never show or run.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence

import numpy as np

from explorer.decoding.records import StepRecord
from explorer.store.arrays import RunArrays
from explorer.views.canvas import draft_lines, is_canvas_run
from explorer.views.canvas_tokens import canvas_segments, live_noise, not_started
from explorer.views.changes import Revision
from explorer.views.tokens import MASK_GLYPH, TokenContext, commit_tooltip, gate_lines
from explorer.views.verdict import TokenMark

FORMAT = 1  # the payload's format version (static/components/player.js reads it)
BEFORE_ANY_STEP = -1  # the start of every position's first segment


def stored_payload(
    arrays: RunArrays,
    token_text: Callable[[int], str],
    open_step: int | None = None,
    marks: dict[int, list[TokenMark]] | None = None,
) -> dict:
    """Every state of a stored run. `open_step`: the step the page shows first (None: the last);
    `marks`: the story checker's verdicts by generated position (its final tokens), or None where
    the checker does not apply. A canvas model's run (`views.canvas.is_canvas_run`) is sent as
    `views.canvas_tokens.canvas_segments` with its draft line per step."""
    steps = [int(s) for s in arrays.steps.tolist()]
    last = steps[-1] if steps else 0
    canvas = is_canvas_run(arrays)  # a canvas model's run: noise drawn as noise, the draft line per step
    gates = draft_lines(arrays, token_text) if canvas else gate_lines(arrays, token_text)
    return {
        "format": FORMAT,
        "key": f"run-{arrays.run.get('id')}",
        "run": arrays.run.get("id"),
        "reset": True,
        "done": arrays.run.get("status", "running") != "running",
        "G": arrays.gen_length,
        "steps": steps,
        "seg": canvas_segments(arrays, token_text) if canvas else token_segments(arrays, token_text, marks or {}),
        "open": last if open_step is None else min(max(int(open_step), steps[0] if steps else 0), last),
        "entropy_top": _entropy_top(arrays),
        "checked": marks is not None,
        "canvas": canvas,  # the page's key says what a canvas run's colours and marks mean
        # a gated run's line per step (a canvas run's draft), in the `.gate-line` under the tokens
        **({"gates": {str(k): v for k, v in gates.items()}} if gates else {}),
    }


def token_segments(
    arrays: RunArrays, token_text: Callable[[int], str], marks: dict[int, list[TokenMark]]
) -> list[list]:
    """[[position, start step, span html], ...]: every position's first (masked) segment, then one
    per step at which what it shows changed, in (position, step) order."""
    G, S = arrays.tokens.shape
    mask_id = int(arrays.run["mask_id"])
    ctx = TokenContext.of(arrays, token_text)
    out = [[p, BEFORE_ANY_STEP, _masked(p)] for p in range(G)]
    if S == 0:
        return out
    tokens = arrays.tokens.astype(np.int64)  # (G, S)
    before = np.concatenate([np.full((G, 1), mask_id, np.int64), tokens[:, :-1]], axis=1)  # (G, S)
    changed = tokens != before  # (G, S): where a position's token changed
    for at, position, _, _ in arrays.edits.rows():  # an edit that left the token as it was still shows
        column = int(np.searchsorted(arrays.steps, max(at, 0)))
        if 0 <= position < G and column < S:
            changed[position, column] = True
    last_change = np.where(changed.any(axis=1), S - 1 - np.argmax(changed[:, ::-1], axis=1), -1)  # (G,)
    for position, column in zip(*np.nonzero(changed)):
        position, column = int(position), int(column)
        step, token = int(arrays.steps[column]), int(tokens[position, column])
        since = step if token != mask_id else -1
        final = column == last_change[position] and token != mask_id
        here = marks.get(position, []) if final else []
        span = ctx.span(
            position,
            step,
            token,
            since,
            data=_data(arrays, ctx, position, column, since, token, here),
            masked_note=f"position {position} · masked",
            note=checker_note(here),
        )
        out.append([position, step, span])
    return out


def checker_note(marks: Sequence[TokenMark]) -> str | None:
    """The tooltip line for a token the story checker objects to (plain text)."""
    if not marks:
        return None
    return "✗ checker: " + "; ".join(f"{m.kind}: {m.message}" for m in marks)


class LivePlayer:
    """The token view's segments of a run that is still decoding, frame by frame: each frame
    carries only the steps that arrived since the last one."""

    def __init__(
        self,
        key: str,
        gen_length: int,
        mask_id: int,
        token_text: Callable[[int], str],
        metric: str,
        canvas: bool = False,
    ) -> None:
        self.key, self.G, self.mask_id, self.token_text, self.metric = key, gen_length, mask_id, token_text, metric
        self.canvas = canvas  # a canvas model's run: noise drawn as noise, unstarted canvases as empty boxes
        self.current = np.full(gen_length, mask_id, dtype=np.int64)  # (G,) the sequence so far
        self.prob = np.full(gen_length, np.nan, dtype=np.float32)  # (G,) p of the token standing there
        self.started = False

    def frame(self, records: Sequence[StepRecord], run_id: int | None = None) -> dict:
        """The new steps' segments (the first frame resets the page's copy of the run)."""
        segments, steps, heat = [], [], []
        if not self.started:
            blank = not_started if self.canvas else _masked
            segments = [[p, BEFORE_ANY_STEP, blank(p)] for p in range(self.G)]
        for record in records:
            masked = self.current == self.mask_id  # (G,) before this step
            heat.append(_column(getattr(record, self.metric), masked))
            segments.extend(self._step(record))
            steps.append(int(record.step))
        payload = {
            "format": FORMAT,
            "key": self.key,
            "run": run_id,
            "reset": not self.started,
            "done": False,
            "G": self.G,
            "steps": steps,
            "seg": segments,
            "heat": {"metric": self.metric, "cols": heat},
        }
        self.started = True
        return payload

    def resume(self, prefix: RunArrays) -> None:
        """Continue after steps the page already holds (a branch's copied steps)."""
        if prefix.n_steps:
            self.current = prefix.tokens[:, -1].astype(np.int64).copy()
            self.prob = np.where(prefix.commit_step >= 0, prefix.commit_prob, np.nan).astype(np.float32)
        self.started = True

    def _step(self, record: StepRecord) -> list[list]:
        out = []
        scores = _violation_scores(record)
        revised = record.revised if record.revised.size == record.n_committed else np.zeros(record.n_committed, bool)
        for i, (position, token) in enumerate(zip(record.committed.tolist(), record.tokens.tolist())):
            prob = float(record.probs[i])
            top = list(zip(np.asarray(record.top_ids[i]).tolist(), np.asarray(record.top_probs[i]).tolist()))
            tip = commit_tooltip(position, record.step, bool(revised[i]), None, prob, top, self.token_text)
            if revised[i]:
                old = int(self.current[position])
                tip += "\n⇄ " + Revision(record.step, position, old, token, float(self.prob[position]), prob).text(
                    self.token_text
                )
            attrs = _attrs(record.step, prob, float(record.entropy[position]), scores.get(position), ())
            badge = ' data-revisions="1"' if revised[i] else ""
            classes = "tok revised" if revised[i] else "tok"
            text = _esc(self.token_text(token))
            out.append(
                [position, record.step, f'<span class="{classes}"{badge}{attrs} data-tip="{_esc(tip)}">{text}</span>']
            )
            self.current[position], self.prob[position] = token, prob
        if record.extras.canvas is not None:
            return out + self._noise(record)
        for position, token in zip(record.remasked.tolist(), record.remasked_tokens.tolist()):
            note = f"position {position} · re-masked at step {record.step}: took away '{self.token_text(token)}'"
            out.append(
                [
                    position,
                    record.step,
                    f'<span class="tok masked remasked" data-remasks="1" data-tip="{_esc(note)}">{MASK_GLYPH}</span>',
                ]
            )
            self.current[position], self.prob[position] = self.mask_id, np.nan
        return out

    def _noise(self, record: StepRecord) -> list[list]:
        """A canvas step: its re-noised positions and every position of its canvas still noise."""
        canvas, lost = record.extras.canvas, set(record.remasked.tolist())
        self.current[record.remasked], self.prob[record.remasked] = self.mask_id, np.nan
        positions = range(canvas.start, canvas.start + canvas.size)
        return [
            [p, record.step, live_noise(p, record.step, p in lost)]
            for p in positions
            if self.current[p] == self.mask_id
        ]


def embed(payload: dict) -> str:
    """The payload as an inert `<template>` for the token view's HTML (a template's content is
    neither shown nor run). `<`, `>` and `&` are written as JSON escapes, so the element's text
    is exactly the JSON and nothing inside can close it."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<template class="player-data">{text}</template>'


# ---- helpers -----------------------------------------------------------------------------------


def _masked(position: int) -> str:
    return f'<span class="tok masked" data-tip="position {position} · still masked">{MASK_GLYPH}</span>'


def _data(arrays: RunArrays, ctx: TokenContext, position: int, column: int, since: int, token: int, marks) -> str:
    """The attributes the page colours a segment's span by (none for a masked one)."""
    if since < 0:
        return ""
    i = ctx.events.at.get((since, position))
    prob = float(arrays.commits.prob[i]) if i is not None and int(arrays.commits.token[i]) == token else math.nan
    return _attrs(
        since, prob, float(arrays.entropy[position, column]), float(arrays.violation[position, column]), marks
    )


def _attrs(since: int, prob: float, entropy: float, violation: float | None, marks: Sequence[TokenMark]) -> str:
    parts = [f' data-c="{since}"']
    for name, value in (("p", prob), ("h", entropy), ("v", violation)):
        if value is not None and math.isfinite(value):
            parts.append(f' data-{name}="{value:.3f}"')
    if marks:
        culprit = any(m.culprit for m in marks)
        kinds = " ".join(sorted({m.kind for m in marks}))
        parts.append(f' data-k="{_esc(kinds)}" data-kc="{int(culprit)}"')
    return "".join(parts)


def _column(values: np.ndarray, masked: np.ndarray) -> list:
    """One step's metric at the positions still masked before it (None elsewhere), 3 decimals."""
    return [round(float(v), 3) if m and math.isfinite(float(v)) else None for v, m in zip(values.tolist(), masked)]


def _violation_scores(record: StepRecord) -> dict[int, float]:
    found = record.extras.violations
    if found is None:
        return {}
    return {
        int(p): float(s) for p, s in zip(np.asarray(found.positions).tolist(), np.asarray(found.token_scores).tolist())
    }


def _entropy_top(arrays: RunArrays) -> float:
    """The largest entropy at commit in the run (the top of the entropy colouring), at least 1e-3."""
    if arrays.n_steps == 0:
        return 1.0
    committed = arrays.commit_step >= 0
    columns = np.searchsorted(arrays.steps, np.maximum(arrays.commit_step, 0))
    columns = np.minimum(columns, arrays.n_steps - 1)
    values = arrays.entropy[np.arange(arrays.gen_length), columns][committed]
    values = values[np.isfinite(values)]
    return max(float(values.max()), 1e-3) if values.size else 1.0


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
