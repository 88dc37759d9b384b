"""The run bundle's schema (explorer/store/bundle.py): pydantic v2 models of both formats and
the checks that need several parts of a run at once, so that every accepted bundle opens
(`TrajectoryStore.read_arrays`) and renders.

Two layers:
- the models (`BundleV1`, `BundleV2` and their parts) check every object's fields: types
  (strict: no string for a number, no boolean for an integer), finiteness, static bounds
  (token ids are int32 as in the store's blobs, -1 in an argmax blob only: no logits at that
  position; probabilities in [0, 1], an event's null: unknown), the exact shapes of a step's
  typed extras (violations, energies, Prophet's check, the schedule mark, a canvas model's step);
- `check_entry` checks one run against the server's caps (`Caps`: gen_length and the number of
  steps, the vocabulary of the named model when it is known, the run's mask id also one past it:
  a canvas model's noise marker) and against itself: blob lengths,
  positions within gen_length, steps in order, the config as a `DecodeConfig`, the event rules
  (edits at the branch step, commits counted, a commit fills a mask, a revision changes a
  visible token, one change per position and step).

Every problem is a `BundleError` with one line (at most `MAX_MESSAGE_CHARS`) saying where and
what: "step 3: extras.energy: missing field keep_probs", "event 4 (step 1): token id 99999 is
outside the vocabulary of model 'embedded' (0..118)"; a version 2 bundle prefixes `runs[i]`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    model_validator,
)

from explorer.decoding.config import ConfigError, DecodeConfig
from explorer.decoding.records import StepExtras
from explorer.decoding.resume import EDIT_EVENTS
from explorer.store.database import COMMIT_EVENTS, MAX_NOTE_CHARS, STATUSES, Event, Run, RunNote, parse_tags

FORMAT = "diffusion-explorer-run"
EDIT_KINDS = tuple(EDIT_EVENTS.values())
EVENT_KINDS = (*COMMIT_EVENTS, "remask", *EDIT_KINDS)
BLOB_DTYPES = {"argmax": "<i4", "confidence": "<f2", "entropy": "<f2", "margin": "<f2"}
DTYPE_NAMES = {"<i4": "int32", "<f2": "float16"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
TOKEN_ID_MAX = 2**31 - 1  # token ids are int32 in the store's blobs and arrays
NO_ARGMAX = -1  # an argmax blob's value at a position without logits (outside a canvas, a recorded run)
MAX_MESSAGE_CHARS = 300
# The defaults of explorer.services.Limits (a test checks they agree); the server passes its own.
DEFAULT_MAX_GEN_LENGTH = 256
DEFAULT_MAX_STEPS = 256
ENTROPY_SLACK = 1e-3  # float16 rounding of an entropy near 0 may dip just below it


class BundleError(ValueError):
    """The bundle cannot be imported; the one-line message says what is wrong and where."""

    def __init__(self, message: str) -> None:
        text = " ".join(str(message).split())  # one line, whatever the bundle's text held
        if len(text) > MAX_MESSAGE_CHARS:
            text = text[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(text)


@dataclass(frozen=True)
class Caps:
    """What a bundle may claim on this server: lengths within the caps, token ids within the named
    model's vocabulary (`vocab_size(model)`: its size, or None when the model is not known here;
    then token ids need only be int32: the UI shows the texts the bundle stored, '#id' for others)."""

    max_gen_length: int = DEFAULT_MAX_GEN_LENGTH
    max_steps: int = DEFAULT_MAX_STEPS
    vocab_size: int | Callable[[str], int | None] | None = None

    def vocabulary(self, model: str) -> int | None:
        size = self.vocab_size(model) if callable(self.vocab_size) else self.vocab_size
        return None if size is None else int(size)


# ---- field types ------------------------------------------------------------------------------


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode text (unpaired surrogate at character {exc.start})") from None
    return value


def _iso_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r:.60} is not an ISO 8601 date and time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _column(table, name: str):
    length = getattr(table.__table__.columns[name].type, "length", None)
    return Annotated[str, Field(strict=True, max_length=length), AfterValidator(_utf8)]


Int64 = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
TokenId = Annotated[int, Field(strict=True, ge=0, le=TOKEN_ID_MAX)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Seconds = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0)]
Prob = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]
Text = Annotated[str, Field(strict=True), AfterValidator(_utf8)]
IsoTime = Annotated[str, Field(strict=True), AfterValidator(_iso_time)]
Flag01 = Annotated[int, Field(strict=True, ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=False)


# ---- blobs ------------------------------------------------------------------------------------


class _Blob(_Model):
    """A per-position array: {"dtype", "length", "data": base64 of the little-endian bytes}."""

    length: Count
    data: Annotated[str, Field(strict=True)]
    _values: np.ndarray = PrivateAttr()
    _raw: bytes = PrivateAttr()

    @model_validator(mode="after")
    def _decode(self):
        dtype = self.dtype  # type: ignore[attr-defined]
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"is not valid base64 ({exc})") from None
        itemsize = np.dtype(dtype).itemsize
        if len(raw) % itemsize:
            raise ValueError(f"is {len(raw)} bytes, not a whole number of {DTYPE_NAMES[dtype]} values")
        values = np.frombuffer(raw, dtype=dtype)
        if dtype == "<i4" and (values < NO_ARGMAX).any():  # -1: no logits at that position
            bad = int(np.flatnonzero(values < NO_ARGMAX)[0])
            raise ValueError(
                f"position {bad} holds token id {int(values[bad])}, token ids are non-negative "
                f"({NO_ARGMAX}: no logits at that position)"
            )
        if dtype == "<f2" and np.isinf(values).any():
            bad = int(np.flatnonzero(np.isinf(values))[0])
            raise ValueError(f"position {bad} is {float(values[bad])}; infinity is not allowed")
        self._raw, self._values = raw, values
        return self

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def values(self) -> np.ndarray:
        return self._values


class IntBlob(_Blob):
    dtype: Literal["<i4"]


class HalfBlob(_Blob):
    dtype: Literal["<f2"]


# ---- a step's typed extras (explorer/decoding/records.py StepExtras) ----------------------------


def _same_length(n: int, **lists: list) -> None:
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries, expected {n}")


def _square(n: int, **matrices: list[list]) -> None:
    for name, rows in matrices.items():
        if len(rows) != n or any(len(row) != n for row in rows):
            raise ValueError(f"{name} must be {n} x {n} (one row and column per position)")


CROSS_FIELDS = ("cross_positions", "cross_tokens", "cross_ago", "cross_D", "cross_flip", "cross_scores")


class Violations(_Model):
    """ViolationRecord.to_json: the pairwise matrices of the committed set (capped at n), and
    the cross-step ones (m recent tokens x n; all six fields or none) when they were measured."""

    positions: list[Count]
    tokens: list[TokenId]
    S: list[list[Finite]]
    A: list[list[Finite]]
    D: list[list[Finite]]
    flip: list[list[Flag01]]
    scores: list[Finite]
    total: Finite
    n_committed: Count
    capped: Annotated[bool, Field(strict=True)]
    seconds: Seconds
    forward_seconds: Seconds | None = None
    cross_positions: list[Count] | None = None
    cross_tokens: list[TokenId] | None = None
    cross_ago: list[Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]] | None = None
    cross_D: list[list[Finite]] | None = None
    cross_flip: list[list[Flag01]] | None = None
    cross_scores: list[Finite] | None = None

    @model_validator(mode="after")
    def _shapes(self):
        n = len(self.positions)
        _same_length(n, tokens=self.tokens, scores=self.scores)
        _square(n, S=self.S, A=self.A, D=self.D, flip=self.flip)
        self._cross_shapes(n)
        if len(set(self.positions)) != n:
            raise ValueError("positions repeat a position")
        if self.n_committed < n:
            raise ValueError(f"n_committed {self.n_committed} is below the {n} positions measured")
        if self.capped != (self.n_committed > n):
            raise ValueError(f"capped is {str(self.capped).lower()} but n_committed is {self.n_committed} for {n}")
        return self

    def _cross_shapes(self, n: int) -> None:
        cross = {name: getattr(self, name) for name in CROSS_FIELDS}
        given = [name for name, value in cross.items() if value is not None]
        if not given:
            return
        if len(given) < len(cross):
            missing = ", ".join(name for name in cross if name not in given)
            raise ValueError(f"the cross-step fields come together: {missing} missing")
        m = len(self.cross_positions)
        if m == 0:
            raise ValueError("cross_positions is empty: a record without recent tokens has no cross fields")
        _same_length(m, cross_tokens=self.cross_tokens, cross_ago=self.cross_ago)
        _same_length(n, cross_scores=self.cross_scores)
        for name in ("cross_D", "cross_flip"):
            rows = cross[name]
            if len(rows) != m or any(len(row) != n for row in rows):
                raise ValueError(f"{name} must be {m} x {n} (one row per recent token, one column per position)")
        if len(set(self.cross_positions)) != m:
            raise ValueError("cross_positions repeat a position")
        if set(self.cross_positions) & set(self.positions):
            raise ValueError("a position is both committed in the step and one of its recent tokens")


class Passes(_Model):
    denoiser: Count
    ar: Count


class Energy(_Model):
    """EnergyRecord.to_json: every candidate's terms, their total, keep probabilities, the kept one."""

    chosen: Count
    terms: dict[Annotated[str, Field(strict=True, max_length=40)], list[Finite]]
    total: Annotated[list[Finite], Field(min_length=1)]
    keep_probs: list[Prob]
    per_position: list[Finite]
    positions: list[Count]
    passes: Passes

    @model_validator(mode="after")
    def _shapes(self):
        k = len(self.total)
        _same_length(k, keep_probs=self.keep_probs, **{f"terms[{name!r}]": v for name, v in self.terms.items()})
        _same_length(len(self.positions), per_position=self.per_position)
        if self.chosen >= k:
            raise ValueError(f"chosen {self.chosen} is not one of the {k} candidates")
        return self


class EnergySkipped(_Model):
    skipped: Annotated[str, Field(strict=True, max_length=500)]


class Prophet(_Model):
    mean_gap: Finite
    early_commit: Annotated[bool, Field(strict=True)]


class Schedule(_Model):
    j: Count
    n_block: Count
    revisions: Count = 0


class Gate(_Model):
    rule: Annotated[str, Field(strict=True, pattern="^(drop|energy|exact|pairwise)$")]
    proposed: list[Count]
    tokens: list[TokenId]
    accepted: list[Flag01]
    score: list[Finite]
    flip: list[Flag01]
    reused: Flag01 = 0

    @model_validator(mode="after")
    def _aligned(self):
        n = len(self.proposed)
        for name in ("tokens", "accepted", "score", "flip"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} proposed positions")
        return self


class Canvas(_Model):
    """CanvasRecord.to_json (explorer/decoding/canvas_record.py): one step of a uniform-noise canvas
    model over its C positions start..start+C-1 (the arrays aligned), and the stop quantities."""

    canvas: Count
    start: Count
    step: Count
    tokens_in: list[TokenId]
    noise_in: list[Flag01]
    sampled: list[TokenId]
    sampled_prob: list[Prob]
    accepted: list[Flag01]
    renoised: list[Flag01]
    flipped: list[Flag01]
    mean_entropy: Finite
    confidence_threshold: Finite | None
    steps_stable: Count
    stable: Annotated[bool, Field(strict=True)]
    confident: Annotated[bool, Field(strict=True)]
    stop: Annotated[bool, Field(strict=True)]
    temperature: Finite | None
    final: Annotated[bool, Field(strict=True)]

    @model_validator(mode="after")
    def _aligned(self):
        n = len(self.tokens_in)
        for name in ("noise_in", "sampled", "sampled_prob", "accepted", "renoised", "flipped"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} canvas positions (tokens_in)")
        return self


class Cost(_Model):
    calls: Count
    sequences: Count
    measure_calls: Count = 0
    measure_sequences: Count = 0
    measure_seconds: Seconds = 0.0


def _energy_kind(value: object) -> str:
    return "skipped" if isinstance(value, dict) and "skipped" in value else "record"


_TAGS = ("record", "skipped")  # the energy union's tags: not part of a field's path in messages


class Extras(_Model):
    violations: Violations | None = None
    energy: (
        Annotated[
            Annotated[Energy, Tag("record")] | Annotated[EnergySkipped, Tag("skipped")], Discriminator(_energy_kind)
        ]
        | None
    ) = None
    prophet: Prophet | None = None
    schedule: Schedule | None = None
    gate: Gate | None = None
    cost: Cost | None = None
    canvas: Canvas | None = None


# ---- rows ---------------------------------------------------------------------------------------


class StepRow(_Model):
    step: Count
    block: Count
    n_committed: Count
    masked_before: Count
    seconds: Seconds
    forward_passes: Count
    argmax: IntBlob
    confidence: HalfBlob
    entropy: HalfBlob
    margin: HalfBlob
    extras: Extras | None


class EventRow(_Model):
    step: Annotated[int, Field(strict=True, ge=-1, le=INT64_MAX)]
    position: Count
    kind: Literal[EVENT_KINDS]  # type: ignore[valid-type]
    token_id: TokenId
    token_text: _column(Event, "token_text")  # type: ignore[valid-type]
    prob: Prob | None  # null: unknown (a recorded run without logits)
    top_ids: list[TokenId]
    top_probs: list[Prob]
    violation_score: Finite | None

    @model_validator(mode="after")
    def _top(self):
        if len(self.top_ids) != len(self.top_probs):
            raise ValueError(f"top_ids has {len(self.top_ids)} entries but top_probs has {len(self.top_probs)}")
        return self


class RunRow(_Model):
    created_at: IsoTime
    finished_at: IsoTime | None
    status: Literal[STATUSES]  # type: ignore[valid-type]
    model: _column(Run, "model")  # type: ignore[valid-type]
    strategy: _column(Run, "strategy")  # type: ignore[valid-type]
    prompt: Text
    prompt_ids: list[TokenId]
    config: dict[str, Any]
    seed: Int64
    gen_length: Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]
    mask_id: TokenId
    device: _column(Run, "device")  # type: ignore[valid-type]
    n_steps: Count
    final_text: Text | None
    final_token_ids: list[TokenId] | None
    error: Text | None
    parent_run_id: Int64 | None = None  # an id of the exporting store
    branch_step: Annotated[int, Field(strict=True, ge=-1, le=INT64_MAX)] | None


class ParentRef(_Model):
    created_at: IsoTime
    model: _column(Run, "model")  # type: ignore[valid-type]
    seed: Int64
    prompt: Text


class Notes(_Model):
    tags: list[Annotated[str, Field(strict=True), AfterValidator(_utf8)]] = []
    note: Annotated[str, Field(strict=True, max_length=MAX_NOTE_CHARS), AfterValidator(_utf8)] = ""
    preset: _column(RunNote, "preset") | None = None  # type: ignore[valid-type]


class Entry(_Model):
    run: RunRow
    parent_ref: ParentRef | None = None
    steps: list[StepRow]
    events: list[EventRow]
    notes: Notes | None = None


class TreeEntry(Entry):
    id: Int64


class BundleV1(Entry):
    format: Literal[FORMAT]  # type: ignore[valid-type]
    version: Literal[1]


class BundleV2(_Model):
    format: Literal[FORMAT]  # type: ignore[valid-type]
    version: Literal[2]
    runs: Annotated[list[TreeEntry], Field(min_length=1)]


# ---- pydantic's errors as one line ------------------------------------------------------------


def type_name(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _path(parts: list) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out and part in BLOB_DTYPES:
            out = f"{part} blob"
        else:
            out += (": " if out.endswith(" blob") else ".") + part if out else str(part)
    return out


def _where(loc: list) -> tuple[str, list]:
    """The object an error is in, as people read it ('run', 'step 3', 'event 5', 'runs[1] run'),
    and the rest of the path inside it."""
    prefix = ""
    if len(loc) >= 2 and loc[0] == "runs" and isinstance(loc[1], int):
        prefix, loc = f"runs[{loc[1]}] ", loc[2:]
    if len(loc) >= 2 and loc[0] in ("steps", "events") and isinstance(loc[1], int):
        return prefix + f"{loc[0][:-1]} {loc[1]}", list(loc[2:])
    if not loc:
        return prefix.strip() or "the bundle", []
    if loc[0] in ("run", "parent_ref", "notes") or (len(loc) == 1 and not prefix):
        return prefix + str(loc[0]), list(loc[1:])
    if prefix:  # a field of a tree's entry (its id)
        return prefix.strip(), loc
    return prefix + "the bundle", loc


def describe(exc: ValidationError) -> str:
    """The first error pydantic found, as one line saying where and what."""
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if p not in _TAGS]
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind in ("missing", "extra_forbidden"):
        where, rest = _where(loc[:-1]) if len(loc) > 1 else ("the bundle", [])
        inside = f"{where}: {_path(rest)}" if rest else where
        what = "missing field" if kind == "missing" else "unknown field"
        return f"{inside}: {what} {loc[-1]}"
    where, rest = _where(loc)
    field = _path(rest)
    subject = f"{where}: {field}" if field else where
    shown = f"{value!r:.60}" if not isinstance(value, (dict, list, type(None))) else ""
    if kind in _EXPECTED:
        nullable = " or null" if _nullable(exc, err) else ""
        got = f"{type_name(value)} {shown}".rstrip()
        if not field and len(loc) >= 2 and isinstance(loc[-1], int):  # an item of a list is not an object
            subject = (f"runs[{loc[1]}] " if loc[0] == "runs" and len(loc) > 2 else "") + f"{loc[-2]}[{loc[-1]}]"
        return f"{subject} must be {_EXPECTED[kind]}{nullable}, got {got}"
    if kind == "finite_number":
        return f"{subject} must be finite, got {value}"
    if kind == "greater_than_equal":
        return f"{subject} must be >= {ctx.get('ge')}, got {value}"
    if kind == "less_than_equal":
        return f"{subject} {value} is over the limit of {ctx.get('le')}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{subject} {shown or type_name(value)} is not one of {expected}"
    if kind == "string_too_long":
        return f"{subject} is {len(value)} characters, over the limit of {ctx.get('max_length')}"
    if kind == "too_short":
        return f"{subject} is empty: it holds at least {ctx.get('min_length')}"
    if kind == "value_error":
        reason = str(ctx.get("error", err["msg"]))
        return f"{subject} {reason}" if reason.startswith(("is ", "has ", "'")) else f"{subject}: {reason}"
    return f"{subject}: {err['msg']}"


def _nullable(exc: ValidationError, err: dict) -> bool:
    """Whether the field also accepts null (pydantic reports the non-null branch's type error)."""
    return any(e["loc"] == err["loc"] and e["type"] == "none_required" for e in exc.errors()) or err["loc"][-1] in (
        "finished_at",
        "final_text",
        "final_token_ids",
        "error",
        "parent_run_id",
        "branch_step",
        "violation_score",
        "prob",
        "confidence_threshold",
        "temperature",
        "extras",
        "preset",
        "parent_ref",
        "notes",
    )


def validate_model(model: type[BaseModel], data: object) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BundleError(describe(exc)) from None
    except RecursionError:
        raise BundleError("the bundle is nested too deeply") from None


# ---- one run against the caps and against itself ----------------------------------------------


def _plain_json(where: str, name: str, value: object) -> None:
    try:  # a dict given directly may hold what JSON cannot
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: {name} is not plain JSON ({exc})") from None


def _check_tokens(
    label: str, name: str, ids, vocab: int | None, model: str, scalar: bool = False, noise: bool = False
) -> None:
    """Token ids within the model's vocabulary 0..vocab-1; with `noise`, also the noise marker
    `vocab` (one past the vocabulary: a canvas model's mask id, "this position holds noise")."""
    if vocab is None:
        return
    ids = np.asarray(ids, dtype=np.int64).ravel()
    top = vocab if noise else vocab - 1
    bad = np.flatnonzero(ids > top)
    if bad.size:
        at = name if scalar else f"{name}[{int(bad[0])}]"
        marker = f"; {vocab}: the noise marker" if noise else ""
        raise BundleError(
            f"{label}: {at}: token id {int(ids[bad[0]])} is outside the vocabulary of model {model!r:.60} "
            f"(0..{top}{marker})"
        )


def _check_config(run: RunRow) -> None:
    where, config = "run", run.config
    _plain_json(where, "config", config)
    for key in ("gen_length", "strategy", "seed"):
        if key in config and config[key] != getattr(run, key):
            raise BundleError(
                f"{where}: config {key} {config[key]!r:.40} differs from the run's {key} {getattr(run, key)!r:.40}"
            )
    # What a decode validated: the same checks (the context is unknown here: only the lengths).
    filled = {"gen_length": run.gen_length, "strategy": run.strategy, "seed": run.seed, **config}
    filled.setdefault("steps", run.gen_length)
    try:
        decoded = DecodeConfig.from_dict(filled)
        prompt = max(len(run.prompt_ids), 1)
        decoded.validate(context_length=prompt + run.gen_length, prompt_length=prompt)
    except (ConfigError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: config is not a valid decode configuration: {exc}") from None


def _check_run(run: RunRow, n_steps: int, caps: Caps, vocab: int | None) -> None:
    where, g = "run", run.gen_length
    if g > caps.max_gen_length:
        raise BundleError(
            f"{where}: gen_length {g} is over this server's limit of {caps.max_gen_length} tokens (max_gen_length)"
        )
    if run.n_steps > caps.max_steps:
        raise BundleError(f"{where}: n_steps {run.n_steps} is over this server's limit of {caps.max_steps} steps")
    if run.n_steps != n_steps:
        raise BundleError(f"{where}: n_steps is {run.n_steps} but the bundle has {n_steps} steps")
    if run.final_token_ids is not None and len(run.final_token_ids) != g:
        raise BundleError(
            f"{where}: final_token_ids has {len(run.final_token_ids)} token ids, expected {g} (gen_length)"
        )
    if run.branch_step is not None and run.branch_step > max(n_steps - 1, -1):
        raise BundleError(f"{where}: branch_step {run.branch_step} is outside -1..{max(n_steps - 1, -1)}")
    _check_tokens(where, "mask_id", [run.mask_id], vocab, run.model, scalar=True, noise=True)
    _check_tokens(where, "prompt_ids", run.prompt_ids, vocab, run.model)
    if run.final_token_ids is not None:  # a canvas run's positions never filled hold its noise marker
        noise = vocab is not None and run.mask_id == vocab
        _check_tokens(where, "final_token_ids", run.final_token_ids, vocab, run.model, noise=noise)
    _check_config(run)


def _check_steps(steps: list[StepRow], raw_steps: list[dict], g: int, vocab: int | None, model: str) -> None:
    for i, (row, raw) in enumerate(zip(steps, raw_steps)):
        label = f"step {row.step}"
        if row.step != i:
            problem = "repeats an earlier step" if row.step < i else f"leaves a gap (expected step {i})"
            raise BundleError(f"{label}: steps must be numbered 0, 1, 2, ... in order; step {row.step} {problem}")
        for name in ("n_committed", "masked_before", "block"):
            value = getattr(row, name)
            if value > g:
                raise BundleError(f"{label}: {name} {value} is over gen_length {g}")
        for name in BLOB_DTYPES:
            blob = getattr(row, name)
            count = len(blob.values)
            if count != g:
                raise BundleError(f"{label}: {name} blob has {count} values, expected {g}")
            if blob.length != count:
                raise BundleError(f"{label}: {name} blob has {count} values but states length {blob.length}")
        _check_tokens(label, "argmax blob: position", row.argmax.values, vocab, model)
        for name, low, high in (("confidence", 0.0, 1.0), ("margin", 0.0, 1.0), ("entropy", -ENTROPY_SLACK, None)):
            values = getattr(row, name).values.astype(np.float32)
            bad = np.flatnonzero((values < low) | ((values > high) if high is not None else False))
            if bad.size:
                span = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
                raise BundleError(
                    f"{label}: {name} blob: position {int(bad[0])} is {float(values[bad[0]])}, not {span}"
                )
        if row.extras is not None:
            _check_extras(label, row.extras, raw["extras"], g, vocab, model)


def _check_extras(label: str, extras: Extras, raw: dict, g: int, vocab: int | None, model: str) -> None:
    where = f"{label}: extras"
    _plain_json(label, "extras", raw)
    for name, positions in (
        ("violations", extras.violations.positions if extras.violations else []),
        ("violations", (extras.violations.cross_positions or []) if extras.violations else []),
        ("energy", extras.energy.positions if isinstance(extras.energy, Energy) else []),
        ("gate", extras.gate.proposed if extras.gate else []),
    ):
        outside = [p for p in positions if p >= g]
        if outside:
            raise BundleError(f"{where}.{name}: position {outside[0]} is outside 0..{g - 1}")
    if extras.canvas is not None:
        canvas = extras.canvas
        end = canvas.start + len(canvas.tokens_in)
        if end > g:
            raise BundleError(
                f"{where}.canvas: positions {canvas.start}..{end - 1} (start {canvas.start}, "
                f"{len(canvas.tokens_in)} canvas positions) are outside 0..{g - 1}"
            )
        _check_tokens(f"{where}.canvas", "tokens_in", canvas.tokens_in, vocab, model)
        _check_tokens(f"{where}.canvas", "sampled", canvas.sampled, vocab, model)
    if extras.violations is not None:
        _check_tokens(f"{where}.violations", "tokens", extras.violations.tokens, vocab, model)
        _check_tokens(f"{where}.violations", "cross_tokens", extras.violations.cross_tokens or [], vocab, model)
    if extras.gate is not None:
        _check_tokens(f"{where}.gate", "tokens", extras.gate.tokens, vocab, model)
    try:  # what the views read back: must agree with the schema
        StepExtras.from_json(raw)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where} {exc}") from None


def _check_event_step(label: str, step: int, kind: str, n_steps: int, branch_step: int | None) -> None:
    """Edit events sit at the run's branch step k (its own edits) or before it (an ancestor's
    edits, copied with the prefix of a branch of a branch), -1 included; others at a stored step."""
    if kind in EDIT_KINDS:
        if branch_step is None:
            raise BundleError(f"{label}: a {kind} event belongs to a branch, but the run's branch_step is null")
        if step > branch_step:
            raise BundleError(
                f"{label}: a {kind} event must be at the run's branch step {branch_step} or before it, not {step}"
            )
        return
    if step < 0:
        raise BundleError(f"{label}: step {step} holds only edit events ({', '.join(EDIT_KINDS)}), not {kind}")
    if step >= n_steps:
        raise BundleError(
            f"{label}: step {step} does not exist (the bundle has steps 0..{n_steps - 1})"
            if n_steps
            else f"{label}: step {step} does not exist (the bundle has no steps)"
        )


def _check_events(events: list[EventRow], steps: list[StepRow], run: RunRow, vocab: int | None) -> None:
    g, commits = run.gen_length, [0] * len(steps)
    for i, event in enumerate(events):
        label = f"event {i}"
        _check_event_step(label, event.step, event.kind, len(steps), run.branch_step)
        label = f"event {i} (step {event.step})"
        if event.position >= g:
            raise BundleError(f"{label}: position {event.position} is outside 0..{g - 1}")
        _check_tokens(label, "token_id", [event.token_id], vocab, run.model, scalar=True)
        _check_tokens(label, "top_ids", event.top_ids, vocab, run.model)
        if event.kind in COMMIT_EVENTS:  # a step's commits count its revisions; edits and re-masks do not
            commits[event.step] += 1
    for row, n in zip(steps, commits):
        if row.n_committed != n:
            raise BundleError(
                f"step {row.step}: n_committed is {row.n_committed} but the bundle has {n} commit events for it"
            )
    _check_changes(events, g, run.mask_id)


# The order the engine applies a step's events in: its commits and revisions (read against the
# state before the step), then its re-masks, then a branch's edits at that step.
_PHASE = {"commit": 0, "revise": 0, "remask": 1, **{kind: 2 for kind in EDIT_KINDS}}


def _check_changes(events: list[EventRow], gen_length: int, mask_id: int) -> None:
    """Replay the events position by position: a commit fills a masked position, a revision
    changes a visible one, neither writes the mask, and a step changes a position once."""
    visible = np.zeros(gen_length, dtype=bool)
    changed: set[tuple[int, int]] = set()
    order = sorted(range(len(events)), key=lambda i: (events[i].step, _PHASE[events[i].kind], i))
    for i in order:
        event = events[i]
        label = f"event {i} (step {event.step})"
        if event.kind in COMMIT_EVENTS:
            kind, position = event.kind, event.position
            if event.token_id == mask_id:
                raise BundleError(
                    f"{label}: a {kind} event at position {position} writes the mask id {mask_id}; "
                    "taking a token away is a remask event"
                )
            if kind == "revise" and not visible[position]:
                raise BundleError(
                    f"{label}: a revise event at position {position}, which is masked before this step; a "
                    "revision changes a visible token (filling a mask is a commit event)"
                )
            if kind == "commit" and visible[position]:
                raise BundleError(
                    f"{label}: a commit event at position {position}, which already holds a token before this "
                    "step; changing a visible token is a revise event"
                )
            if (event.step, position) in changed:
                raise BundleError(
                    f"{label}: position {position} has a second commit or revise event in this step; a step "
                    "changes a position at most once"
                )
            changed.add((event.step, position))
        visible[event.position] = event.kind in (*COMMIT_EVENTS, "force")


def _check_notes(notes: Notes | None) -> dict | None:
    """The run_notes columns (tags as stored: ",a,b,"), or None when there are none."""
    if notes is None:
        return None
    for i, tag in enumerate(notes.tags):
        if "," in tag:
            raise BundleError(f"notes: tags[{i}] {tag!r:.40} holds a comma, which separates tags")
    try:
        clean = parse_tags(notes.tags)
    except ValueError as exc:
        raise BundleError(f"notes: {exc}") from None
    if not (clean or notes.note or notes.preset):
        return None
    return {"tags": "," + ",".join(clean) + "," if clean else "", "note": notes.note, "preset": notes.preset}


def check_entry(entry: Entry, raw: dict, caps: Caps) -> dict | None:
    """Check one validated run against the caps and against itself (BundleError on the first
    problem); its notes as run_notes columns (or None). `raw`: the entry as given (its extras)."""
    run = entry.run
    if entry.parent_ref is not None and run.parent_run_id is None:  # a reference to nothing
        raise BundleError("parent_ref is given but run.parent_run_id is null")
    vocab = caps.vocabulary(run.model)
    if vocab is not None and vocab <= 0:
        vocab = None
    _check_run(run, len(entry.steps), caps, vocab)
    _check_steps(entry.steps, raw["steps"], run.gen_length, vocab, run.model)
    _check_events(entry.events, entry.steps, run, vocab)
    return _check_notes(entry.notes)
