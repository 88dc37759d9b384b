"""What both recorders share: token texts from an optional tokenizer, a step record over the whole
generated part, the run's config checked like any run's, and writing a run through `StoreWriter`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from explorer.decoding.callbacks import RunStart
from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.engine import error_text
from explorer.decoding.records import DecodeResult, StepCost, StepExtras, StepRecord
from explorer.store.database import StoreWriter, TrajectoryStore

ONE_PASS = StepExtras(cost=StepCost(calls=1, sequences=1))  # one decoder pass of one sequence
# A commit's probability where the recording has none: unknown, stored as NULL (events.prob,
# migration 0004) and read back as NaN; views show "p unknown", bundles carry null.
UNKNOWN_PROB = float("nan")


def token_texter(tokenizer, mask_id: int) -> Callable[[int], str]:
    """id -> the text stored with an event: the tokenizer's piece if one is given, else the id."""

    def text(token_id: int) -> str:
        token_id = int(token_id)
        if token_id == mask_id:
            return "<noise>" if tokenizer is None else str(getattr(tokenizer, "mask_token", None) or "<mask>")
        if tokenizer is None:
            return str(token_id)
        piece = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return piece if piece.strip() else str(tokenizer.convert_ids_to_tokens(token_id))

    return text


def decoded_text(tokenizer, ids: Sequence[int], mask_id: int) -> str:
    """The run's text: the tokenizer's decoding of the kept tokens (special ones left out); "" without one."""
    if tokenizer is None:
        return ""
    return tokenizer.decode([int(i) for i in ids if int(i) != mask_id], skip_special_tokens=True).strip()


def one_row(value, what: str) -> np.ndarray:
    """A (1, L) tensor, array or list as a (L,) int64 array; a batch of more than one row is refused."""
    array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.int64)
    if array.ndim == 2 and array.shape[0] != 1:
        raise ValueError(
            f"{what} has a batch of {array.shape[0]} rows; recording takes one sequence at a time (batch size 1)"
        )
    if array.ndim not in (1, 2):
        raise ValueError(f"{what} must be a (1, length) tensor, got shape {tuple(array.shape)}")
    return array.reshape(-1)


def checked_config(prompt_length: int, **settings) -> DecodeConfig:
    """The DecodeConfig stored with a recorded run, validated as any run's is (ValueError if not)."""
    try:
        config = DecodeConfig(**settings)
        return config.validate(context_length=prompt_length + config.gen_length, prompt_length=prompt_length)
    except (ConfigError, TypeError) as exc:
        raise ValueError(f"the recorded run's settings are not a valid decode configuration: {exc}") from None


def step_record(
    step: int,
    block: int,
    gen_length: int,
    masked_before: int,
    seconds: float,
    *,
    committed: np.ndarray | None = None,
    tokens: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    top_ids: np.ndarray | None = None,
    top_probs: np.ndarray | None = None,
    metrics: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    **more,
) -> StepRecord:
    """A StepRecord over all `gen_length` positions: argmax -1 and metrics NaN where not known,
    `metrics` = (start, argmax, confidence, entropy, margin) over positions start.. when known;
    a commit's probability UNKNOWN_PROB and no alternatives (read back as -1 / NaN) where not given."""
    argmax = np.full(gen_length, -1, np.int32)
    confidence, entropy, margin = (np.full(gen_length, np.nan, np.float32) for _ in range(3))
    if metrics is not None:
        start, *values = metrics
        for out, value in zip((argmax, confidence, entropy, margin), values):
            out[start : start + len(value)] = value
    committed = np.zeros(0, np.int64) if committed is None else np.asarray(committed, np.int64)
    n = committed.size
    return StepRecord(
        step=step,
        block=block,
        committed=committed,
        tokens=np.zeros(0, np.int64) if tokens is None else np.asarray(tokens, np.int64),
        probs=np.full(n, UNKNOWN_PROB, np.float32) if probs is None else np.asarray(probs, np.float32),
        top_ids=np.zeros((n, 0), np.int64) if top_ids is None else np.asarray(top_ids, np.int64),
        top_probs=np.zeros((n, 0), np.float32) if top_probs is None else np.asarray(top_probs, np.float32),
        argmax=argmax,
        confidence=confidence,
        entropy=entropy,
        margin=margin,
        masked_before=masked_before,
        seconds=seconds,
        forward_passes=1,
        extras=ONE_PASS,
        **more,
    )


def write_run(store: TrajectoryStore, start: RunStart, token_text, records: Sequence[StepRecord], result) -> int:
    """A whole recorded run written at once; a failure while writing leaves it marked failed."""
    writer = StoreWriter(store, token_text)
    writer.on_start(start)
    try:
        for record in records:
            writer.on_step(record)
        writer.on_end(result)
    except BaseException as exc:
        end_failed(writer, result.token_ids, len(records), exc)
        raise
    return writer.run_id


def end_failed(writer: StoreWriter, token_ids: list[int], n_steps: int, error: BaseException | str) -> None:
    """End a writer's run as failed (its steps so far kept); a store that fails again is left as it is."""
    text = error if isinstance(error, str) else error_text(error)
    try:
        writer.on_end(DecodeResult("failed", list(token_ids), "", n_steps, error=text))
    except Exception:
        if writer.run_id is not None:
            try:
                writer.store.mark_failed(writer.run_id, text)
            except Exception:
                pass  # the database is gone: the run stays `running` until recover_interrupted marks it
