"""Export stored runs as self-contained JSON bundles, and import them back.

A bundle carries everything a replay needs (the run row, every step with its per-position
arrays, every event), so a CPU-only deployment can reopen runs recorded elsewhere. Two formats:

    version 1, one run:
    {"format": "diffusion-explorer-run", "version": 1,
     "run":        {every Run column but id; datetimes ISO 8601 in UTC},
     "parent_ref": {"created_at", "model", "seed", "prompt"} of the parent run, or null,
     "steps":      [{every Step column but run_id; each array as
                     {"dtype": "<i4" | "<f2", "length": G, "data": base64 of the little-endian bytes}}],
     "events":     [{every Event column but id and run_id}, ... in insertion order]}

    version 2, a branch tree:
    {"format": "diffusion-explorer-run", "version": 2,
     "runs": [{"id": the run's id in the exporting store, "run": ..., "parent_ref": ...,
               "steps": ..., "events": ...}, ... parents before their children]}

Optional in either version, beside a run's "run": "notes": {"tags": [...], "note": "...",
"preset": name or null}, a person's tags and note on the run and the teaching preset that
started it (the run_notes table); written only for a run that has them, and bundles without
it import as before.

`export_run(store, run_id)` returns a version 1 dict, `export_run_json` its UTF-8 JSON bytes;
`export_tree(store, run_id)` / `export_tree_json` the version 2 bundle of the run's whole
branch tree (up its `parent_run_id` links to the root, then every descendant). In both, a
run's `parent_run_id` is an id of the exporting store. `parent_ref` is optional on import
(bundles written before it existed lack it).

A branch run (explorer/branching) holds a copy of its parent's steps 0..k and their events,
then its edits as events of kind `force` / `remask_edit` at step k = `branch_step` (k = -1:
from the prompt, so those edit events have step -1), then its own steps. A branch of a branch
also holds its ancestors' edit events, copied with the prefix, at their (earlier) branch steps.
The checks: a run with edit events has a `branch_step` k, and every edit event is at step k
or before it; step -1 holds edit events only; -1 <= branch_step < n_steps; edit events are not
commits (a step's `n_committed` counts its `commit` and `revise` events).

Revisions (XDLM: a visible token changed into another) are events of kind `revise`. Replayed in
the engine's order (edits at step -1; then per step its commits and revisions against the state
before the step, its re-masks, then the edits at that step), a `commit` must fill a masked
position and a `revise` must change a visible one; neither writes the run's mask id, and a
step changes a position at most once. So `read_arrays` replays the imported run exactly as
the engine decoded it.

`import_bundle(store, data)` validates the whole bundle (either version) before writing
anything, then inserts every run, parents first, with its steps and events in one transaction
and returns an `ImportReport`: the new run ids in bundle order and notes for people.
`import_run(store, data)` imports a version 1 bundle and returns the new run id. Import rules:

- ids are local to a database: every run gets a new id, and its `parent_run_id` is linked:
  to the parent's new id when the parent is in the bundle; else to a run of the target store
  whose created_at, model, seed and prompt equal the bundle's `parent_ref` (the oldest such
  run); else the link is dropped (null) and a note says so. `branch_step` is always kept.
- a run exported while its worker was still writing (status `running`) is stored as `failed`
  with error 'imported while still running': a replay store has no live worker that would
  ever finish it. Its `finished_at` stays null (it never finished); its steps are kept.
- every other column is stored as it is in the bundle, so exporting the imported run gives
  the same bytes as the original export, apart from `parent_run_id` (and `parent_ref`, null,
  when the link was dropped).

Any problem with the input (over `MAX_BUNDLE_BYTES`, not UTF-8, malformed JSON, a wrong
format tag or version, a missing, unknown or mistyped field, a bad blob, inconsistent steps or
events, a tree whose parent links point forward or at the run itself) raises `BundleError`
with one line saying what is wrong and where (prefixed `runs[i]` in a version 2 bundle), and
writes nothing. A database failure while inserting raises `StoreError`; the transaction is
rolled back. JSON has no NaN or infinity: JSON numbers must be finite. Float16 metric blobs
may hold NaN (the "undefined" marker of `read_arrays`) but not infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import JSON, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from explorer.decoding.records import StepExtras
from explorer.decoding.resume import EDIT_EVENTS
from explorer.store.database import (
    COMMIT_EVENTS,
    MAX_NOTE_CHARS,
    STATUSES,
    Event,
    Run,
    RunNote,
    Step,
    StoreError,
    TrajectoryStore,
    parse_tags,
)

FORMAT = "diffusion-explorer-run"
VERSION = 1  # one run
TREE_VERSION = 2  # a branch tree: several runs
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
RUNNING_IMPORT_ERROR = "imported while still running"
EDIT_KINDS = tuple(EDIT_EVENTS.values())  # a branch's edits, stored as events at its branch step
EVENT_KINDS = (*COMMIT_EVENTS, "remask", *EDIT_KINDS)
BLOB_DTYPES = {"argmax": "<i4", "confidence": "<f2", "entropy": "<f2", "margin": "<f2"}
_DTYPE_NAMES = {"<i4": "int32", "<f2": "float16"}
_INT64 = (-(2**63), 2**63 - 1)

RUN_FIELDS = tuple(c.name for c in Run.__table__.columns if c.name != "id")
STEP_FIELDS = tuple(c.name for c in Step.__table__.columns if c.name != "run_id")
_RUN_JSON_COLUMNS = frozenset(c.name for c in Run.__table__.columns if isinstance(c.type, JSON))
EVENT_FIELDS = tuple(c.name for c in Event.__table__.columns if c.name not in ("id", "run_id"))
# What identifies a parent run in another store (ids do not travel): its row's own facts.
PARENT_REF_FIELDS = ("created_at", "model", "seed", "prompt")
_ENTRY_FIELDS = ("run", "steps", "events")
_OPTIONAL_ENTRY_FIELDS = ("parent_ref", "notes")
NOTES_FIELDS = ("tags", "note", "preset")


class BundleError(ValueError):
    """The bundle cannot be imported; the one-line message says what is wrong and where."""


class UnknownRunError(KeyError):
    """No run with that id in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown run"


@dataclass(frozen=True)
class ImportReport:
    """What `import_bundle` did: the new run ids (in bundle order) and notes for people."""

    run_ids: list[int]
    notes: list[str]


# ---- export ----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC; a naive datetime (how SQLite returns the store's UTC times) is UTC."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _blob_out(raw: bytes, dtype: str) -> dict:
    return {
        "dtype": dtype,
        "length": len(raw) // np.dtype(dtype).itemsize,
        "data": base64.b64encode(raw).decode("ascii"),
    }


def _get_run(s: Session, store: TrajectoryStore, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise UnknownRunError(f"no run with id {run_id} in {store.url}")
    return run


def _parent_ref(s: Session, run: Run) -> dict | None:
    parent = s.get(Run, run.parent_run_id) if run.parent_run_id is not None else None
    if parent is None:
        return None
    return {"created_at": _iso(parent.created_at), "model": parent.model, "seed": parent.seed, "prompt": parent.prompt}


def _entry_out(s: Session, run: Run) -> dict:
    """One run's part of a bundle: run, parent_ref, steps, events (plain JSON types)."""
    run_out = {name: getattr(run, name) for name in RUN_FIELDS}
    run_out["created_at"] = _iso(run_out["created_at"])
    run_out["finished_at"] = _iso(run_out["finished_at"])
    steps = s.scalars(select(Step).where(Step.run_id == run.id).order_by(Step.step)).all()
    events = s.scalars(select(Event).where(Event.run_id == run.id).order_by(Event.id)).all()
    step_out = [
        {
            name: (_blob_out(getattr(st, name), BLOB_DTYPES[name]) if name in BLOB_DTYPES else getattr(st, name))
            for name in STEP_FIELDS
        }
        for st in steps
    ]
    event_out = [{name: getattr(ev, name) for name in EVENT_FIELDS} for ev in events]
    entry = {"run": run_out, "parent_ref": _parent_ref(s, run), "steps": step_out, "events": event_out}
    notes = s.get(RunNote, run.id)
    if notes is not None and (notes.tags or notes.note or notes.preset):
        entry["notes"] = {"tags": [t for t in notes.tags.split(",") if t], "note": notes.note, "preset": notes.preset}
    return entry


def export_run(store: TrajectoryStore, run_id: int) -> dict:
    """The run as a version 1 bundle dict (plain JSON types). Raises UnknownRunError for an unknown id.

    Run, steps and events are read in one transaction, so a run still being written exports
    as a consistent snapshot.
    """
    with store.session() as s, s.begin():
        entry = _entry_out(s, _get_run(s, store, run_id))
    return {"format": FORMAT, "version": VERSION, **entry}


def _root(s: Session, run: Run) -> Run:
    """The top of the run's tree: up the parent links while the parent exists (a seen set
    guards against a cycle written to the database by hand)."""
    seen = {run.id}
    while run.parent_run_id is not None and run.parent_run_id not in seen:
        parent = s.get(Run, run.parent_run_id)
        if parent is None:
            break
        run = parent
        seen.add(run.id)
    return run


def _descendants(s: Session, root: Run) -> Iterator[Run]:
    """The root, then its descendants breadth first (so parents come before children)."""
    queue, seen = [root], {root.id}
    while queue:
        run = queue.pop(0)
        yield run
        children = s.scalars(select(Run).where(Run.parent_run_id == run.id).order_by(Run.id)).all()
        queue.extend(c for c in children if c.id not in seen)
        seen.update(c.id for c in children)


def export_tree(store: TrajectoryStore, run_id: int) -> dict:
    """The run's whole branch tree as a version 2 bundle dict, parents before children, read in
    one transaction. Raises UnknownRunError for an unknown id."""
    with store.session() as s, s.begin():
        runs = list(_descendants(s, _root(s, _get_run(s, store, run_id))))
        entries = [{"id": run.id, **_entry_out(s, run)} for run in runs]
    return {"format": FORMAT, "version": TREE_VERSION, "runs": entries}


def bundle_json(bundle: dict, what: str = "the bundle") -> bytes:
    """A bundle dict as compact UTF-8 JSON. Deterministic: the same stored runs give the same bytes."""
    try:
        text = json.dumps(bundle, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # a stored float is inf: JSON cannot carry it
        raise BundleError(f"{what} cannot be exported as JSON: {exc}") from None
    return text.encode("utf-8")


def export_run_json(store: TrajectoryStore, run_id: int) -> bytes:
    """`export_run` as compact UTF-8 JSON."""
    return bundle_json(export_run(store, run_id), f"run {run_id}")


def export_tree_json(store: TrajectoryStore, run_id: int) -> bytes:
    """`export_tree` as compact UTF-8 JSON."""
    return bundle_json(export_tree(store, run_id), f"the tree of run {run_id}")


# ---- parsing ----------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise BundleError(f"the JSON holds {name}, which is not a JSON number (NaN and infinity are refused)")


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(f"the JSON repeats the key {key!r} in one object")
        out[key] = value
    return out


def _parse(data: bytes | bytearray | memoryview | str | dict) -> dict:
    limit = MAX_BUNDLE_BYTES  # read at call time (tests and callers may change it)
    if isinstance(data, dict):
        return data
    if isinstance(data, str):
        if len(data) > limit:
            raise BundleError(
                f"the bundle is at least {len(data)} bytes ({len(data)} characters), "
                f"over the limit of {limit} (MAX_BUNDLE_BYTES)"
            )
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BundleError(
                f"the bundle text cannot be encoded as UTF-8 (character {exc.start}: {exc.reason})"
            ) from None
        if len(raw) > limit:
            raise BundleError(f"the bundle is {len(raw)} bytes, over the limit of {limit} (MAX_BUNDLE_BYTES)")
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) > limit:
            raise BundleError(f"the bundle is {len(raw)} bytes, over the limit of {limit} (MAX_BUNDLE_BYTES)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(
                f"the bundle is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            ) from None
    else:
        raise BundleError(f"a bundle is bytes, str or dict, not {type(data).__name__}")
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except BundleError:  # NaN / Infinity or a repeated key, found while parsing
        raise
    except json.JSONDecodeError as exc:
        raise BundleError(f"the bundle is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise BundleError("the bundle is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with too many digits
        raise BundleError(f"the bundle is not valid JSON: {exc}") from None


# ---- validation -------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return (
        "null"
        if value is None
        else {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
            type(value), type(value).__name__
        )
    )


def _int(
    where: str, name: str, value: object, low: int = _INT64[0], high: int = _INT64[1], nullable: bool = False
) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(
            f"{where}: {name} must be an integer{' or null' if nullable else ''}, got {_type_name(value)} {value!r:.60}"
        )
    if not _INT64[0] <= value <= _INT64[1]:
        raise BundleError(f"{where}: {name} {value} does not fit in a 64-bit integer")
    if not low <= value <= high:
        raise BundleError(
            f"{where}: {name} must be >= {low}, got {value}"
            if high == _INT64[1]
            else f"{where}: {name} {value} is outside {low}..{high}"
        )
    return value


def _float(where: str, name: str, value: object, nullable: bool = False, low: float | None = None) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(
            f"{where}: {name} must be a number{' or null' if nullable else ''}, got {_type_name(value)} {value!r:.60}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise BundleError(f"{where}: {name} must be finite, got {value}")
    if low is not None and value < low:
        raise BundleError(f"{where}: {name} {value} is below {low}")
    return value


def _str(where: str, name: str, value: object, column=None, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BundleError(
            f"{where}: {name} must be a string{' or null' if nullable else ''}, got {_type_name(value)} {value!r:.60}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BundleError(
            f"{where}: {name} is not valid Unicode text (unpaired surrogate at character {exc.start})"
        ) from None
    length = getattr(column.type, "length", None) if column is not None else None
    if length is not None and len(value) > length:
        raise BundleError(f"{where}: {name} is {len(value)} characters, over the column's {length}")
    return value


def _token_ids(where: str, name: str, value: object, nullable: bool = False, length: int | None = None) -> list | None:
    if value is None and nullable:
        return None
    if not isinstance(value, list):
        raise BundleError(
            f"{where}: {name} must be an array of token ids{' or null' if nullable else ''}, got {_type_name(value)}"
        )
    if length is not None and len(value) != length:
        raise BundleError(f"{where}: {name} has {len(value)} token ids, expected {length} (gen_length)")
    for i, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok <= _INT64[1]:
            raise BundleError(f"{where}: {name}[{i}] must be a non-negative integer token id, got {tok!r:.60}")
    return value


def _datetime(where: str, name: str, value: object, nullable: bool = False) -> datetime | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BundleError(
            f"{where}: {name} must be an ISO 8601 string{' or null' if nullable else ''}, got {_type_name(value)}"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BundleError(f"{where}: {name} {value!r:.60} is not an ISO 8601 date and time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _fields(where: str, obj: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(obj, dict):
        raise BundleError(f"{where} must be an object, got {_type_name(obj)}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise BundleError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise BundleError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    return obj


def _blob(where: str, name: str, value: object, gen_length: int) -> bytes:
    dtype = BLOB_DTYPES[name]
    label = f"{where}: {name} blob"
    _fields(label, value, ("dtype", "length", "data"))
    if value["dtype"] != dtype:
        raise BundleError(
            f"{label} has dtype {value['dtype']!r:.40}, expected {dtype!r} ({_DTYPE_NAMES[dtype]}, little-endian)"
        )
    stated = _int(label, "length", value["length"], 0)
    if not isinstance(value["data"], str):
        raise BundleError(f"{label}: data must be a base64 string, got {_type_name(value['data'])}")
    try:
        raw = base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"{label} is not valid base64 ({exc})") from None
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise BundleError(
            f"{label} is {len(raw)} bytes, not a whole number of {_DTYPE_NAMES[dtype]} values "
            f"(expected {gen_length} values, {gen_length * itemsize} bytes)"
        )
    count = len(raw) // itemsize
    if count != gen_length:
        raise BundleError(f"{label} has {count} values, expected {gen_length}")
    if stated != count:
        raise BundleError(f"{label} has {count} values but states length {stated}")
    values = np.frombuffer(raw, dtype=dtype)
    if name == "argmax":
        if (values < 0).any():
            bad = int(np.flatnonzero(values < 0)[0])
            raise BundleError(f"{label}: position {bad} holds token id {int(values[bad])}, token ids are non-negative")
    elif np.isinf(values).any():
        bad = int(np.flatnonzero(np.isinf(values))[0])
        raise BundleError(f"{label}: position {bad} is {float(values[bad])}; infinity is not allowed")
    return raw


def _json_value(where: str, name: str, value: object, nullable: bool = False) -> dict | None:
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {name} must be an object{' or null' if nullable else ''}, got {_type_name(value)}")
    try:  # a dict given directly may hold what JSON cannot
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{where}: {name} is not plain JSON ({exc})") from None
    return value


def _step_extras(where: str, value: object) -> dict | None:
    """A step's extras: plain JSON that reads back as typed records (kept as given, so that
    exporting the imported run gives the same bytes)."""
    value = _json_value(where, "extras", value, nullable=True)
    try:
        StepExtras.from_json(value)
    except ValueError as exc:
        raise BundleError(f"{where}: extras {exc}") from None
    return value


def _validate_run(obj: object) -> dict:
    where = "run"
    run = _fields(where, obj, tuple(f for f in RUN_FIELDS if f != "parent_run_id"), ("parent_run_id",))
    cols = Run.__table__.columns
    g = _int(where, "gen_length", run["gen_length"], 1)
    n_steps = _int(where, "n_steps", run["n_steps"], 0)
    status = _str(where, "status", run["status"], cols.status)
    if status not in STATUSES:
        raise BundleError(f"{where}: status {status!r:.40} is not one of {', '.join(STATUSES)}")
    out = {
        "created_at": _datetime(where, "created_at", run["created_at"]),
        "finished_at": _datetime(where, "finished_at", run["finished_at"], nullable=True),
        "status": status,
        "model": _str(where, "model", run["model"], cols.model),
        "strategy": _str(where, "strategy", run["strategy"], cols.strategy),
        "prompt": _str(where, "prompt", run["prompt"]),
        "prompt_ids": _token_ids(where, "prompt_ids", run["prompt_ids"]),
        "config": _json_value(where, "config", run["config"]),
        "seed": _int(where, "seed", run["seed"]),
        "gen_length": g,
        "mask_id": _int(where, "mask_id", run["mask_id"], 0),
        "device": _str(where, "device", run["device"], cols.device),
        "n_steps": n_steps,
        "final_text": _str(where, "final_text", run["final_text"], nullable=True),
        "final_token_ids": _token_ids(where, "final_token_ids", run["final_token_ids"], nullable=True, length=g),
        "error": _str(where, "error", run["error"], nullable=True),
        # an id of the exporting store: import_bundle links it to an id of the target store
        "parent_run_id": _int(where, "parent_run_id", run.get("parent_run_id"), nullable=True),
        # k = -1: branched from the prompt; a branch holds at least its parent's steps 0..k
        "branch_step": _int(where, "branch_step", run["branch_step"], -1, max(n_steps - 1, -1), nullable=True),
    }
    for key in ("gen_length", "strategy", "seed"):
        if key in out["config"] and out["config"][key] != out[key]:
            raise BundleError(
                f"{where}: config {key} {out['config'][key]!r:.40} differs from the run's {key} {out[key]!r:.40}"
            )
    if status == "running":
        out["status"], out["error"] = "failed", RUNNING_IMPORT_ERROR
    return out


def _validate_steps(obj: object, gen_length: int) -> list[dict]:
    if not isinstance(obj, list):
        raise BundleError(f"steps must be an array, got {_type_name(obj)}")
    rows = []
    for i, item in enumerate(obj):
        label = f"steps[{i}]"
        if isinstance(item, dict) and isinstance(item.get("step"), int) and not isinstance(item["step"], bool):
            label = f"step {item['step']}"
        _fields(label, item, STEP_FIELDS)
        number = _int(label, "step", item["step"], 0)
        if number != i:
            problem = "repeats an earlier step" if number < i else f"leaves a gap (expected step {i})"
            raise BundleError(f"{label}: steps must be numbered 0, 1, 2, ... in order; step {number} {problem}")
        rows.append(
            {
                "step": number,
                "block": _int(label, "block", item["block"], 0),
                "n_committed": _int(label, "n_committed", item["n_committed"], 0, gen_length),
                "masked_before": _int(label, "masked_before", item["masked_before"], 0, gen_length),
                "seconds": _float(label, "seconds", item["seconds"], low=0.0),
                "forward_passes": _int(label, "forward_passes", item["forward_passes"], 0),
                **{name: _blob(label, name, item[name], gen_length) for name in BLOB_DTYPES},
                "extras": _step_extras(label, item["extras"]),
            }
        )
    return rows


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


def _validate_events(obj: object, steps: list[dict], gen_length: int, branch_step: int | None) -> list[dict]:
    if not isinstance(obj, list):
        raise BundleError(f"events must be an array, got {_type_name(obj)}")
    cols = Event.__table__.columns
    commits_per_step = [0] * len(steps)
    rows = []
    for i, item in enumerate(obj):
        label = f"event {i}"
        _fields(label, item, EVENT_FIELDS)
        step = _int(label, "step", item["step"], -1)
        kind = _str(label, "kind", item["kind"], cols.kind)
        if kind not in EVENT_KINDS:
            raise BundleError(f"{label}: kind {kind!r:.40} is not one of {', '.join(EVENT_KINDS)}")
        _check_event_step(label, step, kind, len(steps), branch_step)
        position = _int(label, "position", item["position"])
        if not 0 <= position < gen_length:
            raise BundleError(f"{label} (step {step}): position {position} is outside 0..{gen_length - 1}")
        top_ids = _token_ids(label, "top_ids", item["top_ids"])
        top_probs = item["top_probs"]
        if not isinstance(top_probs, list):
            raise BundleError(f"{label}: top_probs must be an array of numbers, got {_type_name(top_probs)}")
        top_probs = [_float(label, f"top_probs[{k}]", p) for k, p in enumerate(top_probs)]
        if len(top_ids) != len(top_probs):
            raise BundleError(f"{label}: top_ids has {len(top_ids)} entries but top_probs has {len(top_probs)}")
        if kind in COMMIT_EVENTS:  # a step's commits count its revisions; edits and re-masks are not commits
            commits_per_step[step] += 1
        rows.append(
            {
                "step": step,
                "position": position,
                "kind": kind,
                "token_id": _int(label, "token_id", item["token_id"], 0),
                "token_text": _str(label, "token_text", item["token_text"], cols.token_text),
                "prob": _float(label, "prob", item["prob"]),
                "top_ids": top_ids,
                "top_probs": top_probs,
                "violation_score": _float(label, "violation_score", item["violation_score"], nullable=True),
            }
        )
    for row, commits in zip(steps, commits_per_step):
        if row["n_committed"] != commits:
            raise BundleError(
                f"step {row['step']}: n_committed is {row['n_committed']} but the bundle has "
                f"{commits} commit events for it"
            )
    return rows


# The order the engine applies a step's events in: its commits and revisions (read against the
# state before the step), then its re-masks, then a branch's edits at that step.
_PHASE = {"commit": 0, "revise": 0, "remask": 1, **{kind: 2 for kind in EDIT_KINDS}}


def _check_changes(events: list[dict], gen_length: int, mask_id: int) -> None:
    """Replay the events position by position: a commit fills a masked position, a revision
    changes a visible one, neither writes the mask, and a step changes a position once."""
    visible = np.zeros(gen_length, dtype=bool)  # holds a token after the events replayed so far
    changed: set[tuple[int, int]] = set()  # (step, position) of the commits and revisions seen
    order = sorted(range(len(events)), key=lambda i: (events[i]["step"], _PHASE[events[i]["kind"]], i))
    for i in order:
        event = events[i]
        if event["kind"] in COMMIT_EVENTS:
            _check_change(f"event {i} (step {event['step']})", event, bool(visible[event["position"]]), mask_id)
            key = (event["step"], event["position"])
            if key in changed:
                raise BundleError(
                    f"event {i} (step {event['step']}): position {event['position']} has a second commit or "
                    "revise event in this step; a step changes a position at most once"
                )
            changed.add(key)
        visible[event["position"]] = event["kind"] in (*COMMIT_EVENTS, "force")


def _check_change(label: str, event: dict, visible: bool, mask_id: int) -> None:
    """One commit or revise event against whether its position held a token before its step."""
    kind, position = event["kind"], event["position"]
    if event["token_id"] == mask_id:
        raise BundleError(
            f"{label}: a {kind} event at position {position} writes the mask id {mask_id}; "
            "taking a token away is a remask event"
        )
    if kind == "revise" and not visible:
        raise BundleError(
            f"{label}: a revise event at position {position}, which is masked before this step; a revision "
            "changes a visible token (filling a mask is a commit event)"
        )
    if kind == "commit" and visible:
        raise BundleError(
            f"{label}: a commit event at position {position}, which already holds a token before this step; "
            "changing a visible token is a revise event"
        )


def _validate_parent_ref(value: object, parent_run_id: int | None) -> dict | None:
    if value is None:
        return None
    where = "parent_ref"
    _fields(where, value, PARENT_REF_FIELDS)
    if parent_run_id is None:  # a reference to nothing: a hand-edited bundle
        raise BundleError(f"{where} is given but run.parent_run_id is null")
    cols = Run.__table__.columns
    return {
        "created_at": _datetime(where, "created_at", value["created_at"]),
        "model": _str(where, "model", value["model"], cols.model),
        "seed": _int(where, "seed", value["seed"]),
        "prompt": _str(where, "prompt", value["prompt"]),
    }


@dataclass(frozen=True)
class BundleRun:
    """One validated run of a bundle: the rows to insert (run["parent_run_id"] still the
    exporting store's id), its id there (version 2 only) and how to find its parent elsewhere."""

    source_id: int | None
    run: dict
    parent_ref: dict | None
    steps: list[dict]
    events: list[dict]
    notes: dict | None = None  # run_notes columns (tags as stored: ",a,b,"), or None


def _validate_entry(entry: dict, source_id: int | None) -> BundleRun:
    run = _validate_run(entry["run"])
    steps = _validate_steps(entry["steps"], run["gen_length"])
    if run["n_steps"] != len(steps):
        raise BundleError(f"run: n_steps is {run['n_steps']} but the bundle has {len(steps)} steps")
    events = _validate_events(entry["events"], steps, run["gen_length"], run["branch_step"])
    _check_changes(events, run["gen_length"], run["mask_id"])
    parent_ref = _validate_parent_ref(entry.get("parent_ref"), run["parent_run_id"])
    return BundleRun(source_id, run, parent_ref, steps, events, _validate_notes(entry.get("notes")))


def _validate_notes(value: object) -> dict | None:
    """The optional "notes" of a run: tags (an array of strings), note (a string), preset (a
    string or null); each field optional. The run_notes columns, or None when there are none."""
    if value is None:
        return None
    where = "notes"
    _fields(where, value, (), NOTES_FIELDS)
    tags = value.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BundleError(f"{where}: tags must be an array of strings, got {_type_name(tags)}")
    for i, tag in enumerate(tags):
        _str(where, f"tags[{i}]", tag)
        if "," in tag:
            raise BundleError(f"{where}: tags[{i}] {tag!r:.40} holds a comma, which separates tags")
    try:
        clean = parse_tags(tags)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    note = _str(where, "note", value.get("note", ""))
    if len(note) > MAX_NOTE_CHARS:
        raise BundleError(f"{where}: note is {len(note)} characters, over {MAX_NOTE_CHARS}")
    preset = _str(where, "preset", value.get("preset"), RunNote.__table__.columns.preset, nullable=True)
    if not (clean or note or preset):
        return None
    return {"tags": "," + ",".join(clean) + "," if clean else "", "note": note, "preset": preset}


def _header(data: bytes | str | dict) -> tuple[dict, int]:
    """The parsed bundle and its version, after checking the format tag."""
    bundle = _parse(data)
    if not isinstance(bundle, dict):
        raise BundleError(f"a bundle is a JSON object, got {_type_name(bundle)}")
    if bundle.get("format") != FORMAT:
        raise BundleError(f"not a run bundle: format is {bundle.get('format')!r:.60}, expected {FORMAT!r}")
    version = bundle.get("version")
    if isinstance(version, bool) or version not in (VERSION, TREE_VERSION):
        raise BundleError(
            f"unsupported bundle version {version!r:.40}; this explorer reads versions {VERSION} and {TREE_VERSION}"
        )
    return bundle, version


def _check_links(runs: list[BundleRun]) -> None:
    """Parents before children: a link to a run listed later (or to itself) would be a cycle or
    need a second pass; a link to an id not in the bundle is resolved by parent_ref."""
    index: dict[int, int] = {}
    for i, run in enumerate(runs):
        if run.source_id in index:
            raise BundleError(f"runs[{i}]: id {run.source_id} repeats the id of runs[{index[run.source_id]}]")
        index[run.source_id] = i
    for i, run in enumerate(runs):
        parent = run.run["parent_run_id"]
        if parent == run.source_id:
            raise BundleError(f"runs[{i}]: parent_run_id {parent} is the run itself")
        if index.get(parent, -1) > i:
            raise BundleError(
                f"runs[{i}]: parent_run_id {parent} is runs[{index[parent]}], listed after it "
                "(parents must come before their children)"
            )


def _tree_runs(bundle: dict) -> list[BundleRun]:
    _fields("the bundle", bundle, ("format", "version", "runs"))
    entries = bundle["runs"]
    if not isinstance(entries, list):
        raise BundleError(f"runs must be an array, got {_type_name(entries)}")
    if not entries:
        raise BundleError("runs is empty: a version 2 bundle holds at least one run")
    runs = []
    for i, entry in enumerate(entries):
        _fields(f"runs[{i}]", entry, ("id", *_ENTRY_FIELDS), _OPTIONAL_ENTRY_FIELDS)
        source_id = _int(f"runs[{i}]", "id", entry["id"])
        try:
            runs.append(_validate_entry(entry, source_id))
        except BundleError as exc:  # say which run of the tree
            raise BundleError(f"runs[{i}] {exc}") from None
    _check_links(runs)
    return runs


def validate_bundle(data: bytes | str | dict) -> list[BundleRun]:
    """Parse and check a bundle of either version; the runs import_bundle would insert, in order."""
    bundle, version = _header(data)
    if version == TREE_VERSION:
        return _tree_runs(bundle)
    _fields("the bundle", bundle, ("format", "version", *_ENTRY_FIELDS), _OPTIONAL_ENTRY_FIELDS)
    return [_validate_entry(bundle, None)]


# ---- import -----------------------------------------------------------------------------------


def _find_parent(s: Session, ref: dict) -> int | None:
    """The oldest run of the store that is the referenced parent (same created_at, model, seed,
    prompt: a run imported verbatim keeps all four)."""
    query = select(Run.id).where(*(getattr(Run, name) == ref[name] for name in PARENT_REF_FIELDS))
    return s.scalar(query.order_by(Run.id).limit(1))


def _link(s: Session, entry: BundleRun, new_ids: dict[int, int]) -> tuple[int | None, str | None]:
    """The parent's id in the target store (None: no parent, or the link is dropped) and what
    a person should know about it (None when the link was kept within the bundle)."""
    parent = entry.run["parent_run_id"]
    if parent is None:
        return None, None
    if parent in new_ids:
        return new_ids[parent], None
    found = _find_parent(s, entry.parent_ref) if entry.parent_ref is not None else None
    if found is not None:
        return found, f"was branched from run {parent}, found in this store as run {found}: linked to it"
    where = "which is not in this store" if entry.parent_ref is not None else "of a store the bundle does not name"
    return None, f"was branched from run {parent}, {where}: the link was dropped (export the tree to keep it)"


def _insert(s: Session, entry: BundleRun, parent_id: int | None) -> int:
    # a null JSON column is SQL NULL, as in a row the store wrote (not the JSON text 'null')
    row = {**entry.run, "parent_run_id": parent_id}
    run = Run(**{k: v for k, v in row.items() if v is not None or k not in _RUN_JSON_COLUMNS})
    s.add(run)
    s.flush()
    if entry.steps:
        s.execute(insert(Step), [{"run_id": run.id, **r} for r in entry.steps])
    if entry.events:
        s.execute(insert(Event), [{"run_id": run.id, **r} for r in entry.events])
    if entry.notes is not None:
        s.add(RunNote(run_id=run.id, **entry.notes))
    return run.id


def _insert_all(s: Session, entries: list[BundleRun]) -> ImportReport:
    new_ids: dict[int, int] = {}  # the exporting store's id -> the new one
    run_ids, notes = [], []
    for entry in entries:  # parents first, so a parent's new id is known before its children
        parent_id, note = _link(s, entry, new_ids)
        run_id = _insert(s, entry, parent_id)
        if entry.source_id is not None:
            new_ids[entry.source_id] = run_id
        run_ids.append(run_id)
        if note:
            name = f"run {entry.source_id}" if entry.source_id is not None else "the imported run"
            notes.append(f"{name} (now {run_id}) {note}")
    return ImportReport(run_ids, notes)


def import_bundle(store: TrajectoryStore, data: bytes | str | dict) -> ImportReport:
    """Validate a bundle of either version, then insert its runs (parents first), steps and
    events in one transaction; the new run ids and notes on the parent links.

    Raises BundleError (nothing written) for any problem with the input, StoreError (rolled
    back, nothing written) if the database refuses the insert.
    """
    entries = validate_bundle(data)
    try:
        with store.session() as s, s.begin():
            return _insert_all(s, entries)
    except SQLAlchemyError as exc:
        reason = exc.orig if getattr(exc, "orig", None) is not None else exc
        raise StoreError(f"cannot import the run into {store.url}: {exc.__class__.__name__}: {reason}") from None


def import_run(store: TrajectoryStore, data: bytes | str | dict) -> int:
    """Import a version 1 (one-run) bundle as `import_bundle` does; the new run id.

    A version 2 (tree) bundle raises BundleError: its runs belong together, import it with
    `import_bundle`.
    """
    bundle, version = _header(data)
    if version == TREE_VERSION:
        raise BundleError("this is a version 2 bundle (a branch tree of several runs): import it with import_bundle")
    return import_bundle(store, bundle).run_ids[0]
