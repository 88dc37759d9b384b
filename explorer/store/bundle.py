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
may hold NaN (the "undefined" marker of `read_arrays`) but not infinity; an event's `prob` is
null where it is unknown (stored NULL, read as NaN), and an argmax blob holds -1 where the step
had no logits. A canvas model's run (its mask id the noise marker, one past the vocabulary)
carries each step's `extras.canvas`, checked against the vocabulary and gen_length.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import JSON, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from explorer.store.bundle_schema import (
    BLOB_DTYPES,
    DEFAULT_MAX_GEN_LENGTH,
    DEFAULT_MAX_STEPS,
    EDIT_KINDS,
    EVENT_KINDS,
    FORMAT,
    BundleError,
    BundleV1,
    BundleV2,
    Caps,
    Entry,
    check_entry,
    type_name,
    validate_model,
)
from explorer.store.database import Event, Run, RunNote, Step, StoreError, TrajectoryStore

__all__ = [
    "EDIT_KINDS",
    "EVENT_KINDS",
    "BundleError",
    "BundleRun",
    "ImportReport",
    "UnknownRunError",
    "export_run",
    "export_run_json",
    "export_tree",
    "export_tree_json",
    "import_bundle",
    "import_run",
    "validate_bundle",
]

VERSION = 1  # one run
TREE_VERSION = 2  # a branch tree: several runs
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
RUNNING_IMPORT_ERROR = "imported while still running"

# A run's writer and heartbeat (owner_pid, owner_host, heartbeat_at) are facts of the store that
# ran it, like its id: they do not travel.
_LOCAL_RUN_COLUMNS = ("id", "owner_pid", "owner_host", "heartbeat_at")
RUN_FIELDS = tuple(c.name for c in Run.__table__.columns if c.name not in _LOCAL_RUN_COLUMNS)
STEP_FIELDS = tuple(c.name for c in Step.__table__.columns if c.name != "run_id")
_RUN_JSON_COLUMNS = frozenset(c.name for c in Run.__table__.columns if isinstance(c.type, JSON))
EVENT_FIELDS = tuple(c.name for c in Event.__table__.columns if c.name not in ("id", "run_id"))
# What identifies a parent run in another store (ids do not travel): its row's own facts.
PARENT_REF_FIELDS = ("created_at", "model", "seed", "prompt")
NOTES_FIELDS = ("tags", "note", "preset")


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
    for ev in event_out:  # unknown: NULL, or a NaN a PostgreSQL store kept from before migration 0004
        if ev["prob"] is not None and ev["prob"] != ev["prob"]:
            ev["prob"] = None
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
# The schema (types, bounds, typed extras) and the per-run checks live in bundle_schema.py.


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


def _rows(entry: Entry, raw: dict, caps: Caps, source_id: int | None) -> BundleRun:
    """The checked entry as the rows to insert: columns as the bundle gave them (config and
    extras as given, so that exporting the imported run gives the same bytes)."""
    notes = check_entry(entry, raw, caps)
    run = entry.run.model_dump(warnings=False)
    run["config"] = raw["run"]["config"]
    if run["status"] == "running":
        run["status"], run["error"] = "failed", RUNNING_IMPORT_ERROR
    steps = [
        {
            **{name: getattr(row, name) for name in STEP_FIELDS if name not in BLOB_DTYPES and name != "extras"},
            **{name: getattr(row, name).raw for name in BLOB_DTYPES},
            "extras": raw_step["extras"],
        }
        for row, raw_step in zip(entry.steps, raw["steps"])
    ]
    events = [event.model_dump(warnings=False) for event in entry.events]
    parent_ref = entry.parent_ref.model_dump(warnings=False) if entry.parent_ref is not None else None
    return BundleRun(source_id, run, parent_ref, steps, events, notes)


def _header(data: bytes | str | dict) -> tuple[dict, int]:
    """The parsed bundle and its version, after checking the format tag."""
    bundle = _parse(data)
    if not isinstance(bundle, dict):
        raise BundleError(f"a bundle is a JSON object, got {type_name(bundle)}")
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


def validate_bundle(
    data: bytes | str | dict,
    *,
    max_gen_length: int = DEFAULT_MAX_GEN_LENGTH,
    max_steps: int = DEFAULT_MAX_STEPS,
    vocab_size: int | Callable[[str], int | None] | None = None,
) -> list[BundleRun]:
    """Parse and check a bundle of either version; the runs import_bundle would insert, in order.

    `max_gen_length`, `max_steps`: the server's caps (explorer.services.Limits); `vocab_size`:
    the vocabulary size of every run's model, or a lookup by model name (None: not known here,
    token ids need only be int32)."""
    bundle, version = _header(data)
    caps = Caps(max_gen_length, max_steps, vocab_size)
    if version == VERSION:
        entry = validate_model(BundleV1, bundle)
        return [_rows(entry, bundle, caps, None)]
    tree = validate_model(BundleV2, bundle)
    runs = []
    for i, (entry, raw) in enumerate(zip(tree.runs, bundle["runs"])):
        try:
            runs.append(_rows(entry, raw, caps, entry.id))
        except BundleError as exc:  # say which run of the tree
            raise BundleError(f"runs[{i}] {exc}") from None
    _check_links(runs)
    return runs


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


def import_bundle(
    store: TrajectoryStore,
    data: bytes | str | dict,
    *,
    max_gen_length: int = DEFAULT_MAX_GEN_LENGTH,
    max_steps: int = DEFAULT_MAX_STEPS,
    vocab_size: int | Callable[[str], int | None] | None = None,
) -> ImportReport:
    """Validate a bundle of either version, then insert its runs (parents first), steps and
    events in one transaction; the new run ids and notes on the parent links.

    Raises BundleError (nothing written) for any problem with the input, StoreError (rolled
    back, nothing written) if the database refuses the insert.
    """
    entries = validate_bundle(data, max_gen_length=max_gen_length, max_steps=max_steps, vocab_size=vocab_size)
    try:
        with store.session() as s, s.begin():
            return _insert_all(s, entries)
    except SQLAlchemyError as exc:
        reason = exc.orig if getattr(exc, "orig", None) is not None else exc
        raise StoreError(f"cannot import the run into {store.url}: {exc.__class__.__name__}: {reason}") from None


def import_run(store: TrajectoryStore, data: bytes | str | dict, **caps) -> int:
    """Import a version 1 (one-run) bundle as `import_bundle` does; the new run id.

    A version 2 (tree) bundle raises BundleError: its runs belong together, import it with
    `import_bundle`.
    """
    bundle, version = _header(data)
    if version == TREE_VERSION:
        raise BundleError("this is a version 2 bundle (a branch tree of several runs): import it with import_bundle")
    return import_bundle(store, bundle, **caps).run_ids[0]
