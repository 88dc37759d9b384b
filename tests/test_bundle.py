"""Run bundles (explorer/store/bundle.py): export a stored run as JSON and import it back.

Real decodes of the embedded model (gen 32, steps 8: greedy, temperature 1, threshold,
cancelled, and a run left `running` by a dead writer) are recorded in a SQLite file, exported,
imported into a second store and into the same store, and compared row by row (raw SQL values
where both stores are the same backend, typed values across backends, blobs byte for byte),
through read_arrays, and by re-exporting. The second store (`target`) is a SQLite file and a
PostgreSQL database in turn (conftest.py's `db_url`), so SQLite -> PostgreSQL -> export gives
the same bytes; runs recorded on PostgreSQL travel to SQLite and back the same way. Every
malformed bundle must raise BundleError with a one-line message and leave the target store
exactly as it was (checked on SQLite: validation comes before any write; a database failure
mid-import is rolled back, checked on both backends).

Branch runs (explorer.branch: a child after step 1 with a forced token, a branch of it with a
re-mask, a branch from the prompt whose edit event has step -1) travel as version 1 bundles
(arrays identical; linked by parent_ref when the parent is already in the target store, else
the link is dropped with a note) and as a version 2 tree bundle (parent links mapped to the
new ids, branch steps kept, the tree re-exports with only its ids changed).
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import fields
from datetime import UTC, datetime

import numpy as np
import pytest
from conftest import new_db_url
from sqlalchemy import func, select, text
from synthetic_runs import StopAfter

from explorer.api import branch, decode
from explorer.branching.edits import Force, Remask
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import run_decode
from explorer.store import bundle as bundle_module
from explorer.store.bundle import (
    FORMAT,
    MAX_BUNDLE_BYTES,
    RUN_FIELDS,
    RUNNING_IMPORT_ERROR,
    TREE_VERSION,
    VERSION,
    BundleError,
    ImportReport,
    UnknownRunError,
    bundle_json,
    export_run,
    export_run_json,
    export_tree,
    export_tree_json,
    import_bundle,
    import_run,
)
from explorer.store.database import Event, Run, Step, StoreError, StoreWriter, TrajectoryStore

PROMPT = "once upon a time"
G, S = 32, 8


class DiesBeforeFinishing(StoreWriter):
    """A writer whose worker was killed after its last flush: the run stays `running`."""

    def on_end(self, result) -> None:
        self.flush()


@pytest.fixture(scope="module")
def source(denoiser, tmp_path_factory):
    """A SQLite file with real runs; returns (store, {kind: run_id}, {kind: Decoded})."""
    path = tmp_path_factory.mktemp("bundle-source") / "a.db"
    store = TrajectoryStore(f"sqlite:///{path}")
    outs = {
        "greedy": decode(PROMPT, denoiser, store=store, gen_length=G, steps=S),
        "sampled": decode(PROMPT, denoiser, store=store, gen_length=G, steps=S, temperature=1.0, seed=7),
        "threshold": decode(PROMPT, denoiser, store=store, gen_length=G, steps=S, strategy="threshold", threshold=0.8),
        "cancelled": decode(PROMPT, denoiser, store=store, gen_length=G, steps=S, callbacks=[StopAfter(2)]),
    }
    ids = {kind: out.run_id for kind, out in outs.items()}
    writer = DiesBeforeFinishing(store, denoiser.token_text, batch_steps=2, max_delay=3600)
    run_decode(
        denoiser,
        denoiser.encode(PROMPT),
        DecodeConfig(gen_length=G, steps=S),
        [writer, StopAfter(3)],
        prompt_text=PROMPT,
    )
    ids["running"] = writer.run_id
    yield store, ids, outs
    store.engine.dispose()


@pytest.fixture
def target(db_url):
    """An empty store on each backend in turn."""
    store = TrajectoryStore(db_url)
    yield store
    store.engine.dispose()


@pytest.fixture
def sqlite_target(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/b.db")
    yield store
    store.engine.dispose()


# ---- helpers ----------------------------------------------------------------------------------


def _without_ids(run, steps, events) -> tuple[dict, list[dict], list[dict]]:
    # owner_pid, owner_host, heartbeat_at: the writing process's, local like the id (not in bundles)
    local = ("id", "parent_run_id", "owner_pid", "owner_host", "heartbeat_at")
    run = {k: v for k, v in run.items() if k not in local}
    steps = [{k: v for k, v in r.items() if k != "run_id"} for r in steps]
    events = [{k: v for k, v in r.items() if k not in ("id", "run_id")} for r in events]
    return run, steps, events


def raw_rows(store: TrajectoryStore, run_id: int) -> tuple[dict, list[dict], list[dict]]:
    """The run's rows as the database driver returns them (text, blobs, NULLs), without the local
    ids; t_* say what a nullable column holds (SQLite's storage class; on PostgreSQL 'null' for
    SQL NULL, else 'value')."""
    if store.engine.dialect.name == "sqlite":
        kind = "typeof({})".format
    else:
        kind = "CASE WHEN {0} IS NULL THEN 'null' ELSE 'value' END".format
    with store.engine.connect() as conn:
        run = (
            conn.execute(text(f"SELECT *, {kind('final_token_ids')} AS t_final FROM runs WHERE id = :i"), {"i": run_id})
            .mappings()
            .one()
        )
        steps = (
            conn.execute(
                text(f"SELECT *, {kind('extras')} AS t_extras FROM steps WHERE run_id = :i ORDER BY step"),
                {"i": run_id},
            )
            .mappings()
            .all()
        )
        events = (
            conn.execute(
                text(f"SELECT *, {kind('violation_score')} AS t_violation FROM events WHERE run_id = :i ORDER BY id"),
                {"i": run_id},
            )
            .mappings()
            .all()
        )
    return _without_ids(run, steps, events)


def typed_rows(store: TrajectoryStore, run_id: int) -> tuple[dict, list[dict], list[dict]]:
    """The run's rows as SQLAlchemy reads them on any backend (naive UTC datetimes, decoded JSON,
    bytes), with whether each nullable JSON or float column is SQL NULL; without the local ids.
    Comparable across backends."""
    runs, steps, events = Run.__table__, Step.__table__, Event.__table__
    with store.engine.connect() as conn:
        run = (
            conn.execute(
                select(runs, runs.c.final_token_ids.is_(None).label("final_is_null")).where(runs.c.id == run_id)
            )
            .mappings()
            .one()
        )
        step_rows = (
            conn.execute(
                select(steps, steps.c.extras.is_(None).label("extras_is_null"))
                .where(steps.c.run_id == run_id)
                .order_by(steps.c.step)
            )
            .mappings()
            .all()
        )
        event_rows = (
            conn.execute(
                select(events, events.c.violation_score.is_(None).label("violation_is_null"))
                .where(events.c.run_id == run_id)
                .order_by(events.c.id)
            )
            .mappings()
            .all()
        )
    return _without_ids(dict(run), [dict(r) for r in step_rows], [dict(r) for r in event_rows])


def orm_run(store: TrajectoryStore, run_id: int) -> dict:
    with store.session() as s:
        run = s.get(Run, run_id)
        local = ("id", "parent_run_id", "owner_pid", "owner_host", "heartbeat_at")
        return {c.name: getattr(run, c.name) for c in Run.__table__.columns if c.name not in local}


def counts(store: TrajectoryStore) -> tuple[int, int, int]:
    with store.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Run, Step, Event))


def assert_same_arrays(store_a, id_a, store_b, id_b) -> None:
    a, b = store_a.read_arrays(id_a), store_b.read_arrays(id_b)
    for f in fields(a):
        if f.name == "run":
            local = ("id", "parent_run_id", "owner_pid", "owner_host", "heartbeat_at")
            assert {k: v for k, v in a.run.items() if k not in local} == {
                k: v for k, v in b.run.items() if k not in local
            }
        elif f.name == "extras":
            assert a.extras == b.extras
        elif f.name in ("commits", "remasks", "edits"):  # event tables
            for g in fields(getattr(a, f.name)):
                x, y = getattr(getattr(a, f.name), g.name), getattr(getattr(b, f.name), g.name)
                np.testing.assert_array_equal(x, y, err_msg=f"{f.name}.{g.name}")
        else:
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)


def assert_identical(store_a, id_a, store_b, id_b) -> None:
    pairs = [(typed_rows(store_a, id_a), typed_rows(store_b, id_b))]
    if store_a.engine.dialect.name == store_b.engine.dialect.name:
        pairs.append((raw_rows(store_a, id_a), raw_rows(store_b, id_b)))
    for rows_a, rows_b in pairs:
        assert rows_a[0] == rows_b[0]
        assert len(rows_a[1]) == len(rows_b[1]) and rows_a[1] == rows_b[1]  # blobs compared as bytes
        assert all(isinstance(r["argmax"], bytes) for r in rows_b[1])
        assert rows_a[2] == rows_b[2]
    assert orm_run(store_a, id_a) == orm_run(store_b, id_b)
    assert_same_arrays(store_a, id_a, store_b, id_b)


# ---- export ------------------------------------------------------------------------------------


def test_bundle_layout(source):
    store, ids, outs = source
    out = outs["greedy"]
    data = export_run_json(store, ids["greedy"])
    assert isinstance(data, bytes)
    bundle = json.loads(data.decode("utf-8"))
    assert bundle == export_run(store, ids["greedy"])
    assert list(bundle) == ["format", "version", "run", "parent_ref", "steps", "events"]
    assert bundle["parent_ref"] is None  # not a branch
    assert bundle["format"] == FORMAT == "diffusion-explorer-run" and bundle["version"] == VERSION == 1
    run = bundle["run"]
    assert tuple(run) == RUN_FIELDS and "id" not in run
    assert run["status"] == "completed" and run["final_token_ids"] == out.token_ids
    assert DecodeConfig(**run["config"]) == DecodeConfig(gen_length=G, steps=S, violations=True)
    from datetime import datetime

    created = datetime.fromisoformat(run["created_at"])
    assert created.utcoffset().total_seconds() == 0 and run["created_at"].endswith("+00:00")
    assert datetime.fromisoformat(run["finished_at"]) >= created
    assert [s["step"] for s in bundle["steps"]] == list(range(S))
    for step, record in zip(bundle["steps"], out.steps, strict=True):
        assert "run_id" not in step
        assert step["argmax"]["dtype"] == "<i4" and step["argmax"]["length"] == G
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(step["argmax"]["data"]), "<i4"), record.argmax)
        for name in ("confidence", "entropy", "margin"):
            assert step[name]["dtype"] == "<f2" and step[name]["length"] == G
            np.testing.assert_array_equal(
                np.frombuffer(base64.b64decode(step[name]["data"]), "<f2"), getattr(record, name).astype(np.float16)
            )
    assert len(bundle["events"]) == G
    assert all("id" not in e and "run_id" not in e for e in bundle["events"])
    assert [(e["step"], e["position"], e["token_id"]) for e in bundle["events"]] == [
        (r.step, p, t) for r in out.steps for p, t in zip(r.committed.tolist(), r.tokens.tolist())
    ]
    assert export_run_json(store, ids["greedy"]) == data  # deterministic


def test_export_unknown_run(source):
    store, ids, _ = source
    missing = max(ids.values()) + 1000
    with pytest.raises(UnknownRunError) as info:
        export_run(store, missing)
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith(f"no run with id {missing}")
    with pytest.raises(KeyError, match=str(missing)):
        export_run_json(store, missing)


# ---- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["greedy", "sampled", "threshold", "cancelled"])
def test_round_trip_into_second_store(source, target, kind):
    store, ids, outs = source
    data = export_run_json(store, ids[kind])
    new_id = import_run(target, data)
    assert isinstance(new_id, int) and target.count_runs() == 1
    assert_identical(store, ids[kind], target, new_id)
    assert target.get_run(new_id)["parent_run_id"] is None
    assert export_run_json(target, new_id) == data
    run = target.get_run(new_id)
    assert run["final_token_ids"] == outs[kind].token_ids
    assert run["n_steps"] == len(outs[kind].steps)


def test_round_trip_into_same_store(source):
    store, ids, _ = source
    data = export_run_json(store, ids["sampled"])
    before = counts(store)
    new_id = import_run(store, data)
    try:
        assert new_id not in ids.values()
        after = counts(store)
        assert after == (before[0] + 1, before[1] + S, before[2] + G)
        assert_identical(store, ids["sampled"], store, new_id)
        assert export_run_json(store, new_id) == data
    finally:
        assert store.delete_run(new_id)
    assert counts(store) == before


def test_cancelled_run_keeps_its_status(source, target):
    store, ids, outs = source
    new_id = import_run(target, export_run(store, ids["cancelled"]))
    run = target.get_run(new_id)
    assert run["status"] == "cancelled" and run["error"] is None and run["n_steps"] == 3
    assert run["final_token_ids"].count(outs["cancelled"].mask_id) == G - 3 * (G // S)
    arrays = target.read_arrays(new_id)
    assert arrays.tokens.shape == (G, 3) and int((arrays.commit_step == -1).sum()) == G - 3 * (G // S)


def test_running_run_imports_as_failed(source, target):
    store, ids, _ = source
    original = store.get_run(ids["running"])
    assert original["status"] == "running" and original["n_steps"] == 4 and original["final_token_ids"] is None
    bundle = export_run(store, ids["running"])
    assert bundle["run"]["status"] == "running" and len(bundle["steps"]) == 4
    new_id = import_run(target, bundle)
    run = target.get_run(new_id)
    assert run["status"] == "failed" and run["error"] == RUNNING_IMPORT_ERROR == "imported while still running"
    assert run["finished_at"] is None and run["final_token_ids"] is None
    # everything else is as recorded: steps, events, arrays, and the other run columns
    rows_a, rows_b = typed_rows(store, ids["running"]), typed_rows(target, new_id)
    assert rows_a[1] == rows_b[1] and rows_a[2] == rows_b[2]
    strip = lambda d: {k: v for k, v in d.items() if k not in ("status", "error")}  # noqa: E731
    assert strip(rows_a[0]) == strip(rows_b[0])
    assert rows_b[0]["final_is_null"] is True  # SQL NULL, as the store leaves it, not the JSON text 'null'
    assert raw_rows(target, new_id)[0]["t_final"] == "null"
    again = export_run(target, new_id)
    bundle["run"].update(status="failed", error=RUNNING_IMPORT_ERROR)
    assert again == bundle


def test_parent_run_id_dropped_branch_step_kept(source, target, tmp_path):
    store, ids, _ = source
    a = TrajectoryStore(f"sqlite:///{tmp_path}/parent.db")
    b = target
    try:
        parent = import_run(a, export_run_json(store, ids["greedy"]))
        child = import_run(a, export_run_json(store, ids["threshold"]))
        with a.session() as s, s.begin():
            row = s.get(Run, child)
            row.parent_run_id, row.branch_step = parent, 3
        exported = export_run_json(a, child)
        assert json.loads(exported)["run"]["parent_run_id"] == parent
        new_id = import_run(b, exported)
        run = b.get_run(new_id)
        assert run["parent_run_id"] is None and run["branch_step"] == 3
        assert_identical(a, child, b, new_id)
        # byte-identical apart from the (database-local) parent id and the parent_ref of a
        # parent that b does not hold
        expected = json.loads(exported)
        assert expected["parent_ref"]["created_at"] == export_run(a, parent)["run"]["created_at"]
        expected["run"]["parent_run_id"], expected["parent_ref"] = None, None
        assert export_run_json(b, new_id) == bundle_json(expected)
    finally:
        a.engine.dispose()


def test_accepts_bytes_str_dict_without_mutating(source, target):
    store, ids, _ = source
    data = export_run_json(store, ids["greedy"])
    bundle = export_run(store, ids["greedy"])
    pristine = copy.deepcopy(bundle)
    run_ids = [
        import_run(target, data),
        import_run(target, data.decode("utf-8")),
        import_run(target, bytearray(data)),
        import_run(target, bundle),
        import_run(target, b"\xef\xbb\xbf" + data),
    ]  # a UTF-8 byte-order mark is tolerated
    assert bundle == pristine
    assert len(set(run_ids)) == 5 and target.count_runs() == 5
    assert all(export_run_json(target, i) == data for i in run_ids)


# ---- refused bundles ----------------------------------------------------------------------------


def _set(path: str, value):
    """A mutation setting bundle[path] (dotted, integers index arrays) to value."""

    def mutate(b: dict) -> None:
        *head, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = b
        for p in head:
            node = node[p]
        node[last] = value

    return mutate


def _delete(path: str):
    def mutate(b: dict) -> None:
        *head, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = b
        for p in head:
            node = node[p]
        del node[last]

    return mutate


def _blob(step: int, name: str, transform):
    def mutate(b: dict) -> None:
        blob = b["steps"][step][name]
        raw = base64.b64decode(blob["data"])
        blob["data"] = base64.b64encode(transform(raw)).decode()

    return mutate


def _drop_event_of_step(step: int):
    def mutate(b: dict) -> None:
        index = next(i for i, e in enumerate(b["events"]) if e["step"] == step)
        del b["events"][index]

    return mutate


def _remove_step(step: int):
    def mutate(b: dict) -> None:
        del b["steps"][step]
        b["events"] = [e for e in b["events"] if e["step"] != step]
        b["run"]["n_steps"] -= 1

    return mutate


def _inf_confidence(raw: bytes) -> bytes:
    values = np.frombuffer(raw, "<f2").copy()
    values[5] = np.inf
    return values.tobytes()


DICT_CASES = {
    "wrong format tag": (
        _set("format", "diffusion-explorer-runs"),
        r"not a run bundle: format is 'diffusion-explorer-runs'",
    ),
    "wrong version": (_set("version", 3), r"unsupported bundle version 3; this explorer reads versions 1 and 2"),
    "version as string": (_set("version", "1"), r"unsupported bundle version '1'"),
    "unknown top-level field": (_set("comment", "hi"), r"the bundle: unknown field comment"),
    "missing steps": (_delete("steps"), r"the bundle: missing field steps"),
    "truncated blob (whole values)": (
        _blob(3, "confidence", lambda r: r[:-4]),
        r"^step 3: confidence blob has 30 values, expected 32$",
    ),
    "truncated blob (half a value)": (
        _blob(2, "argmax", lambda r: r[:-1]),
        r"step 2: argmax blob is 127 bytes, not a whole number of int32 values",
    ),
    "blob too long": (_blob(1, "entropy", lambda r: r + r[:2]), r"step 1: entropy blob has 33 values, expected 32"),
    "blob length field wrong": (
        _set("steps.0.margin.length", 31),
        r"step 0: margin blob has 32 values but states length 31",
    ),
    "blob dtype wrong": (_set("steps.0.argmax.dtype", "<i8"), r"step 0: argmax blob: dtype '<i8' is not one of <i4"),
    "blob not base64": (_set("steps.4.entropy.data", "!!not base64!!"), r"step 4: entropy blob is not valid base64"),
    "blob data not a string": (
        _set("steps.4.entropy.data", [1, 2]),
        r"step 4: entropy blob: data must be a string, got array",
    ),
    "infinity in a blob": (_blob(6, "confidence", _inf_confidence), r"step 6: confidence blob: position 5 is inf"),
    "negative argmax": (
        _blob(0, "argmax", lambda r: np.full(G, -3, "<i4").tobytes()),
        r"step 0: argmax blob: position 0 holds token id -3",
    ),
    "event position out of range": (
        _set("events.5.position", G),
        r"event 5 \(step 1\): position 32 is outside 0\.\.31",
    ),
    "event position negative": (_set("events.0.position", -1), r"^event 0: position must be >= 0, got -1$"),
    "event step missing": (_set("events.7.step", S), r"event 7: step 8 does not exist \(the bundle has steps 0\.\.7\)"),
    "step numbers with a gap": (
        _remove_step(4),
        r"step 5: steps must be numbered 0, 1, 2, \.\.\. in order; "
        r"step 5 leaves a gap \(expected step 4\)",
    ),
    "repeated step number": (_set("steps.2.step", 1), r"step 1: .* step 1 repeats an earlier step"),
    "steps not from 0": (_set("steps.0.step", 1), r"step 1: .* leaves a gap \(expected step 0\)"),
    "n_steps disagrees": (_set("run.n_steps", S + 1), r"run: n_steps is 9 but the bundle has 8 steps"),
    "events missing for a step": (
        _drop_event_of_step(6),
        r"step 6: n_committed is 4 but the bundle has 3 commit events",
    ),
    "status not allowed": (
        _set("run.status", "done"),
        r"run: status 'done' is not one of running, completed, failed, cancelled",
    ),
    "missing run field": (_delete("run.prompt"), r"run: missing field prompt"),
    "unknown step field": (_set("steps.0.energy", 1.0), r"step 0: unknown field energy"),
    "negative token id": (_set("events.3.token_id", -1), r"^event 3: token_id must be >= 0, got -1$"),
    "token id not an integer": (
        _set("events.3.token_id", 4.0),
        r"event 3: token_id must be an integer, got number 4\.0",
    ),
    "boolean as integer": (_set("run.seed", True), r"run: seed must be an integer, got boolean True"),
    "negative prompt id": (
        _set("run.prompt_ids.0", -2),
        r"^run: prompt_ids\[0\] must be >= 0, got -2$",
    ),
    "final tokens wrong length": (
        _set("run.final_token_ids", [1] * (G - 1)),
        r"run: final_token_ids has 31 token ids, expected 32 \(gen_length\)",
    ),
    "token text not a string": (
        _set("events.2.token_text", 17),
        r"event 2: token_text must be a string, got integer 17",
    ),
    "prompt not a string": (_set("run.prompt", ["once"]), r"run: prompt must be a string, got array"),
    "error not a string": (_set("run.error", 1), r"run: error must be a string or null, got integer 1"),
    "model name too long": (_set("run.model", "m" * 201), r"run: model is 201 characters, over the limit of 200"),
    "bad datetime": (_set("run.created_at", "yesterday"), r"run: created_at 'yesterday' is not an ISO 8601 date"),
    "config not an object": (_set("run.config", "{}"), r"run: config must be an object, got string"),
    "config disagrees with run": (
        _set("run.config.gen_length", 64),
        r"run: config gen_length 64 differs from the run's gen_length 32",
    ),
    "top ids and probs differ": (
        _set("events.1.top_probs", [0.5]),
        r"event 1: top_ids has 3 entries but top_probs has 1",
    ),
    "event kind unknown": (_set("events.1.kind", "flip"), r"event 1: kind 'flip' is not one of commit, revise, remask"),
    "integer beyond 64 bits": (
        _set("run.seed", 2**64),
        r"run: seed 18446744073709551616 is over the limit of 9223372036854775807",
    ),
    "negative seconds": (_set("steps.1.seconds", -0.5), r"^step 1: seconds must be >= 0\.0, got -0\.5$"),
    "steps not an array": (_set("steps", {"0": {}}), r"steps must be an array, got object"),
    "step not an object": (_set("steps.0", 7), r"steps\[0\] must be an object, got integer"),
    "run not an object": (_set("run", None), r"run must be an object, got null"),
}

BYTES_CASES = {
    "malformed JSON": (
        lambda d: d[: d.index(b'"prompt":"') + 14],
        r"the bundle is not valid JSON: Unterminated string .*\(line 1, column \d+\)$",
    ),
    "empty input": (lambda d: b"", r"the bundle is not valid JSON: Expecting value"),
    "not an object": (lambda d: b"[1, 2, 3]", r"a bundle is a JSON object, got array"),
    "non-UTF-8 bytes": (
        lambda d: d.replace(b'"prompt":"once', b'"prompt":"\xffnce', 1),
        r"the bundle is not valid UTF-8: byte 0xff at offset \d+",
    ),
    "NaN in JSON": (
        lambda d: d.replace(b'"seconds":', b'"seconds":NaN,"x":', 1),
        r"^the JSON holds NaN, which is not a JSON number",
    ),
    "Infinity in JSON": (lambda d: d.replace(b'"prob":', b'"prob":Infinity,"y":', 1), r"the JSON holds Infinity"),
    "repeated key": (
        lambda d: d.replace(b'"version":1', b'"version":1,"version":1', 1),
        r"^the JSON repeats the key 'version' in one object$",
    ),
    "unpaired surrogate in text": (
        lambda d: d.replace(b'"prompt":"once', b'"prompt":"\\ud800once', 1),
        r"run: prompt is not valid Unicode text \(unpaired surrogate at character 0\)",
    ),
    "deeply nested": (lambda d: b"[" * 100_000 + b"]" * 100_000, r"the bundle is not valid JSON"),
}


@pytest.fixture
def loaded_target(source, sqlite_target):
    """A SQLite store already holding one imported run, so 'unchanged' is not just 'empty'."""
    store, ids, _ = source
    import_run(sqlite_target, export_run_json(store, ids["threshold"]))
    return sqlite_target


def _assert_refused(store: TrajectoryStore, data, pattern: str, importer=import_run) -> BundleError:
    before, runs_before = counts(store), store.list_runs()
    with pytest.raises(BundleError, match=pattern) as info:
        importer(store, data)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 300, message
    assert counts(store) == before and store.list_runs() == runs_before
    return info.value


@pytest.mark.parametrize("case", list(DICT_CASES))
def test_refused_bundle(source, loaded_target, case):
    store, ids, _ = source
    mutate, pattern = DICT_CASES[case]
    bundle = export_run(store, ids["greedy"])
    mutate(bundle)
    _assert_refused(loaded_target, bundle, pattern)  # as a dict ...
    data = json.dumps(bundle, allow_nan=True).encode()
    _assert_refused(loaded_target, data, pattern)  # ... and as the JSON bytes


@pytest.mark.parametrize("case", list(BYTES_CASES))
def test_refused_bytes(source, loaded_target, case):
    store, ids, _ = source
    make, pattern = BYTES_CASES[case]
    _assert_refused(loaded_target, make(export_run_json(store, ids["greedy"])), pattern)


def test_refused_input_type(loaded_target):
    _assert_refused(loaded_target, 42, r"a bundle is bytes, str or dict, not int")
    _assert_refused(loaded_target, ["not", "a", "bundle"], r"not list")
    _assert_refused(loaded_target, "\ud800", r"cannot be encoded as UTF-8")


def test_refused_dict_values_json_cannot_carry(source, loaded_target):
    store, ids, _ = source
    bundle = export_run(store, ids["greedy"])
    bundle["run"]["config"]["extra"] = {1, 2}
    _assert_refused(loaded_target, bundle, r"run: config is not plain JSON \(Object of type set")
    bundle = export_run(store, ids["greedy"])
    bundle["steps"][2]["extras"] = {"energy": float("nan")}
    _assert_refused(loaded_target, bundle, r"step 2: extras\.energy must be an object, got number nan")
    bundle = export_run(store, ids["greedy"])
    bundle["events"][4]["prob"] = float("inf")
    _assert_refused(loaded_target, bundle, r"event 4: prob must be finite, got inf")


def test_size_limit(source, loaded_target, monkeypatch):
    store, ids, _ = source
    assert MAX_BUNDLE_BYTES == 64 * 1024 * 1024
    data = export_run_json(store, ids["greedy"])
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", len(data) - 1)
    _assert_refused(loaded_target, data, rf"^the bundle is {len(data)} bytes, over the limit of {len(data) - 1}")
    _assert_refused(loaded_target, data.decode(), rf"the bundle is at least {len(data)} bytes .*, over the limit of")
    # a str is measured in UTF-8 bytes, not characters
    wide = data.decode().replace('"prompt":"once', '"prompt":"\u00e9nce', 1)
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", len(wide))
    _assert_refused(loaded_target, wide, r"over the limit")
    # refused before parsing: oversized garbage reports the size, not the JSON error
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", 10)
    _assert_refused(loaded_target, b"{" * 11, r"over the limit of 10")
    _assert_refused(loaded_target, "x" * 11, r"at least 11 bytes \(11 characters\), over the limit of 10")
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", len(data))
    new_id = import_run(loaded_target, data)
    assert export_run_json(loaded_target, new_id) == data


_BLOCK_EVENTS = {  # a trigger refusing every insert into events, per backend
    "sqlite": [
        "CREATE TRIGGER no_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'events are read-only today'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION no_events() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'events are read-only today'; END $$",
        "CREATE TRIGGER no_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION no_events()",
    ],
}
_UNBLOCK_EVENTS = {
    "sqlite": ["DROP TRIGGER no_events"],
    "postgresql": ["DROP TRIGGER no_events ON events", "DROP FUNCTION no_events()"],
}


def test_database_failure_mid_import_writes_nothing(source, target):
    """A failure after the run row and the steps were inserted rolls the whole import back."""
    store, ids, _ = source
    data = export_run_json(store, ids["greedy"])
    import_run(target, export_run_json(store, ids["threshold"]))  # not just empty
    dialect = target.engine.dialect.name
    with target.engine.begin() as conn:
        for statement in _BLOCK_EVENTS[dialect]:
            conn.execute(text(statement))
    before = counts(target)
    with pytest.raises(StoreError, match="events are read-only today"):
        import_run(target, data)
    assert counts(target) == before
    with target.engine.begin() as conn:
        for statement in _UNBLOCK_EVENTS[dialect]:
            conn.execute(text(statement))
    new_id = import_run(target, data)
    assert counts(target) == (before[0] + 1, before[1] + S, before[2] + G)
    assert_identical(store, ids["greedy"], target, new_id)


# ---- branch runs and trees ------------------------------------------------------------------------

BG, BS = 16, 4  # the branch tests' generation length and steps


@pytest.fixture(scope="module")
def branches(denoiser, tmp_path_factory):
    """A SQLite file with a branch tree: parent; child (after step 1, a forced token); grandchild
    (after the child's step 2, that token re-masked); from_prompt (k = -1, so its edit event has
    step -1). Returns (store, {name: run_id})."""
    path = tmp_path_factory.mktemp("bundle-branches") / "tree.db"
    store = TrajectoryStore(f"sqlite:///{path}")
    parent = decode(PROMPT, denoiser, store=store, gen_length=BG, steps=BS).run_id
    child = branch(parent, 1, store, edits=[Force(3, "girl")], model=denoiser).run_id
    grandchild = branch(child, 2, store, edits=[Remask(3)], model=denoiser).run_id
    from_prompt = branch(parent, -1, store, edits=[Force(0, "girl")], model=denoiser).run_id
    yield store, {"parent": parent, "child": child, "grandchild": grandchild, "from_prompt": from_prompt}
    store.engine.dispose()


def _dropped(bundle: dict) -> bytes:
    """The bundle as a store without the run's parent exports it: no parent id, no parent_ref."""
    bundle = copy.deepcopy(bundle)
    bundle["run"]["parent_run_id"], bundle["parent_ref"] = None, None
    return bundle_json(bundle)


def _dropped_note(name: str, new_id: int, parent: int) -> str:
    return (
        f"{name} (now {new_id}) was branched from run {parent}, which is not in this store: "
        "the link was dropped (export the tree to keep it)"
    )


@pytest.mark.parametrize(
    ("name", "k", "edit_kinds"),
    [
        ("child", 1, ["force"]),
        ("grandchild", 2, ["force", "remask_edit"]),  # the child's edit, copied, and its own
        ("from_prompt", -1, ["force"]),
    ],
)
def test_branch_run_round_trip(branches, target, name, k, edit_kinds):
    store, ids = branches
    data = export_run_json(store, ids[name])
    bundle = json.loads(data)
    assert bundle["run"]["branch_step"] == k and bundle["run"]["parent_run_id"] is not None
    edits = [e for e in bundle["events"] if e["kind"] in ("force", "remask_edit")]
    assert [e["kind"] for e in edits] == edit_kinds and edits[-1]["step"] == k
    parent = store.get_run(bundle["run"]["parent_run_id"])
    assert bundle["parent_ref"] == {
        "created_at": parent["created_at"].replace(tzinfo=UTC).isoformat(timespec="microseconds"),
        "model": parent["model"],
        "seed": parent["seed"],
        "prompt": parent["prompt"],
    }
    report = import_bundle(target, data)
    assert isinstance(report, ImportReport) and len(report.run_ids) == 1
    new_id = report.run_ids[0]
    assert report.notes == [_dropped_note("the imported run", new_id, parent["id"])]
    run = target.get_run(new_id)
    assert run["parent_run_id"] is None and run["branch_step"] == k
    assert_same_arrays(store, ids[name], target, new_id)
    assert target.read_arrays(new_id).edits.size == len(edit_kinds)
    assert export_run_json(target, new_id) == _dropped(bundle)


def test_parent_first_then_child_links_by_parent_ref(branches, target):
    """Each run imported alone, parents first: every one finds its parent by parent_ref, and
    re-exports byte for byte apart from parent_run_id."""
    store, ids = branches
    new = {}
    for name in ("parent", "child", "grandchild", "from_prompt"):
        data = export_run_json(store, ids[name])
        report = import_bundle(target, data)
        new[name] = new_id = report.run_ids[0]
        source_parent = store.get_run(ids[name])["parent_run_id"]
        if source_parent is None:
            assert report.notes == [] and target.get_run(new_id)["parent_run_id"] is None
            assert export_run_json(target, new_id) == data
            continue
        parent_name = next(n for n, i in ids.items() if i == source_parent)
        assert target.get_run(new_id)["parent_run_id"] == new[parent_name]
        assert report.notes == [
            f"the imported run (now {new_id}) was branched from run {source_parent}, "
            f"found in this store as run {new[parent_name]}: linked to it"
        ]
        assert_same_arrays(store, ids[name], target, new_id)
        assert export_run_json(target, new_id) == data.replace(
            f'"parent_run_id":{source_parent},'.encode(), f'"parent_run_id":{new[parent_name]},'.encode()
        )


def _tree_ids_mapped(bundle: dict, new: dict[int, int]) -> dict:
    out = copy.deepcopy(bundle)
    for entry in out["runs"]:
        entry["id"] = new[entry["id"]]
        if entry["run"]["parent_run_id"] is not None:
            entry["run"]["parent_run_id"] = new[entry["run"]["parent_run_id"]]
    return out


def test_tree_round_trip(branches, target):
    store, ids = branches
    original = export_tree(store, ids["grandchild"])
    assert original["version"] == TREE_VERSION == 2 and list(original) == ["format", "version", "runs"]
    assert [e["id"] for e in original["runs"]] == [ids[n] for n in ("parent", "child", "from_prompt", "grandchild")]
    assert all(export_tree(store, i) == original for i in ids.values())  # any member exports the whole tree
    assert list(original["runs"][1]) == ["id", "run", "parent_ref", "steps", "events"]
    report = import_bundle(target, export_tree_json(store, ids["child"]))
    assert report.notes == [] and target.count_runs() == 4
    new = dict(zip([e["id"] for e in original["runs"]], report.run_ids))
    for entry in original["runs"]:
        run = target.get_run(new[entry["id"]])
        source_parent = entry["run"]["parent_run_id"]
        assert run["parent_run_id"] == (new[source_parent] if source_parent is not None else None)
        assert run["branch_step"] == entry["run"]["branch_step"]
        assert_same_arrays(store, entry["id"], target, new[entry["id"]])
    expected = _tree_ids_mapped(original, new)
    assert export_tree(target, new[ids["from_prompt"]]) == expected
    assert export_tree_json(target, new[ids["parent"]]) == bundle_json(expected)


def test_partial_tree_drops_the_outside_link(branches, target):
    """A tree bundle without the root: the child's link is dropped with a note (the root is not
    in the store), the grandchild's is kept (its parent is in the bundle)."""
    store, ids = branches
    bundle = export_tree(store, ids["parent"])
    bundle["runs"] = [e for e in bundle["runs"] if e["id"] in (ids["child"], ids["grandchild"])]
    report = import_bundle(target, bundle)
    child, grandchild = report.run_ids
    assert report.notes == [_dropped_note(f"run {ids['child']}", child, ids["parent"])]
    assert target.get_run(child)["parent_run_id"] is None and target.get_run(child)["branch_step"] == 1
    assert target.get_run(grandchild)["parent_run_id"] == child and target.get_run(grandchild)["branch_step"] == 2


def test_import_run_refuses_a_tree(branches, loaded_target):
    store, ids = branches
    _assert_refused(loaded_target, export_tree_json(store, ids["child"]), r"version 2 bundle .*import_bundle")


def test_old_bundle_without_parent_ref(branches, sqlite_target):
    """A version 1 bundle written before parent_ref existed still imports; its link is dropped."""
    store, ids = branches
    bundle = export_run(store, ids["child"])
    del bundle["parent_ref"]
    report = import_bundle(sqlite_target, bundle)
    assert "of a store the bundle does not name: the link was dropped" in report.notes[0]
    assert sqlite_target.get_run(report.run_ids[0])["parent_run_id"] is None


def _event_index(bundle: dict, kind: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(bundle["events"]) if e["kind"] == kind][nth]


def _edit_at_step(step: int, kind: str = "force"):
    def mutate(b: dict) -> None:
        b["events"][_event_index(b, kind)]["step"] = step

    return mutate


def _commit_at_step_minus_one(b: dict) -> None:
    b["events"][_event_index(b, "commit")]["step"] = -1


BRANCH_CASES = {  # mutations of the child's (k = 1) version 1 bundle
    "edit event after the branch step": (
        _edit_at_step(2),
        r"^event \d+: a force event must be at the run's branch step 1 or before it, not 2$",
    ),
    "commit event at step -1": (
        _commit_at_step_minus_one,
        r"^event 0: step -1 holds only edit events \(force, remask_edit\), not commit$",
    ),
    "step below -1": (_set("events.0.step", -2), r"^event 0: step must be >= -1, got -2$"),
    "edit event in a run that is no branch": (
        _set("run.branch_step", None),
        r"a force event belongs to a branch, but the run's branch_step is null",
    ),
    "branch step past the steps": (_set("run.branch_step", BS), r"^run: branch_step 4 is outside -1\.\.3$"),
    "branch step below -1": (_set("run.branch_step", -2), r"^run: branch_step must be >= -1, got -2$"),
    "parent_ref without a parent": (
        _set("run.parent_run_id", None),
        r"^parent_ref is given but run\.parent_run_id is null$",
    ),
    "parent_ref field missing": (_delete("parent_ref.seed"), r"^parent_ref: missing field seed$"),
    "parent_ref date": (_set("parent_ref.created_at", "then"), r"^parent_ref: created_at 'then' is not an ISO"),
}


@pytest.mark.parametrize("case", list(BRANCH_CASES))
def test_refused_branch_bundle(branches, loaded_target, case):
    store, ids = branches
    mutate, pattern = BRANCH_CASES[case]
    bundle = export_run(store, ids["child"])
    mutate(bundle)
    for importer in (import_run, import_bundle):
        _assert_refused(loaded_target, bundle, pattern, importer)
        _assert_refused(loaded_target, json.dumps(bundle).encode(), pattern, importer)


def test_step_minus_one_edits(branches, loaded_target):
    """A branch from the prompt keeps its edit at step -1; as a commit, or moved past its branch
    step, it is refused; as an ancestor's edit (branch_step 0 from a branch of it) it is fine."""
    store, ids = branches
    bundle = export_run(store, ids["from_prompt"])
    assert bundle["run"]["branch_step"] == -1
    assert (bundle["events"][0]["step"], bundle["events"][0]["kind"]) == (-1, "force")
    moved = copy.deepcopy(bundle)
    moved["events"][0]["step"] = 0
    _assert_refused(loaded_target, moved, r"^event 0: a force event must be at the run's branch step -1 or before it")
    as_commit = copy.deepcopy(bundle)
    as_commit["events"][0]["kind"] = "commit"
    _assert_refused(loaded_target, as_commit, r"^event 0: step -1 holds only edit events")
    bundle["run"]["branch_step"] = 0
    new_id = import_run(loaded_target, bundle)
    assert loaded_target.read_arrays(new_id).edits.rows() == store.read_arrays(ids["from_prompt"]).edits.rows()


def _swap(i: int, j: int):
    def mutate(b: dict) -> None:
        b["runs"][i], b["runs"][j] = b["runs"][j], b["runs"][i]

    return mutate


def _parent_of(i: int, j: int | None):
    """runs[i]'s parent becomes runs[j] (None: runs[i] itself)."""

    def mutate(b: dict) -> None:
        b["runs"][i]["run"]["parent_run_id"] = b["runs"][i if j is None else j]["id"]

    return mutate


def _tree_blob(i: int, step: int):
    def mutate(b: dict) -> None:
        b["runs"][i]["steps"][step]["entropy"]["length"] = 3

    return mutate


TREE_CASES = {  # mutations of the tree bundle (runs: parent, child, from_prompt, grandchild)
    "child listed before its parent": (
        _swap(0, 1),
        r"^runs\[0\]: parent_run_id \d+ is runs\[1\], listed after it \(parents must come before their children\)$",
    ),
    "parent link to itself": (_parent_of(1, None), r"^runs\[1\]: parent_run_id \d+ is the run itself$"),
    "cycle through the root": (_parent_of(0, 3), r"^runs\[0\]: parent_run_id \d+ is runs\[3\], listed after it"),
    "repeated id": (_set("runs.2.id", 1), r"runs\[\d\]: id 1 repeats the id of runs\[\d\]"),
    "bad blob in one run": (_tree_blob(1, 3), r"^runs\[1\] step 3: entropy blob has 16 values but states length 3$"),
    "bad edit event in one run": (
        lambda b: _edit_at_step(3, "remask_edit")(b["runs"][3]),
        r"^runs\[3\] event \d+: a remask_edit event must be at the run's branch step 2 or before it, not 3$",
    ),
    "bad run field": (_set("runs.2.run.status", "done"), r"^runs\[2\] run: status 'done' is not one of"),
    "id not an integer": (_set("runs.1.id", "2"), r"^runs\[1\]: id must be an integer, got string"),
    "missing id": (_delete("runs.1.id"), r"^runs\[1\]: missing field id$"),
    "run entry not an object": (_set("runs.1", []), r"^runs\[1\] must be an object, got array$"),
    "runs empty": (_set("runs", []), r"^runs is empty"),
    "runs not an array": (_set("runs", {}), r"^runs must be an array, got object$"),
    "single-run fields in a tree": (_set("run", {}), r"^the bundle: unknown field run$"),
}


@pytest.mark.parametrize("case", list(TREE_CASES))
def test_refused_tree_bundle(branches, loaded_target, case):
    store, ids = branches
    mutate, pattern = TREE_CASES[case]
    bundle = export_tree(store, ids["parent"])
    assert [e["id"] for e in bundle["runs"]] == [ids[n] for n in ("parent", "child", "from_prompt", "grandchild")]
    mutate(bundle)
    _assert_refused(loaded_target, bundle, pattern, import_bundle)
    _assert_refused(loaded_target, json.dumps(bundle).encode(), pattern, import_bundle)


def test_database_failure_mid_tree_import_writes_nothing(branches, target):
    """The whole tree is one transaction: a refused insert of the last run's events rolls back
    the runs before it."""
    store, ids = branches
    data = export_tree_json(store, ids["parent"])
    dialect = target.engine.dialect.name
    with target.engine.begin() as conn:
        for statement in _BLOCK_EVENTS[dialect]:
            conn.execute(text(statement))
    with pytest.raises(StoreError, match="events are read-only today"):
        import_bundle(target, data)
    assert counts(target) == (0, 0, 0)
    with target.engine.begin() as conn:
        for statement in _UNBLOCK_EVENTS[dialect]:
            conn.execute(text(statement))
    assert len(import_bundle(target, data).run_ids) == 4


# ---- across backends ------------------------------------------------------------------------------


@pytest.mark.postgresql
def test_sqlite_to_postgresql_and_back(request, source, tmp_path):
    """SQLite -> PostgreSQL -> SQLite: every hop exports the same bytes as the original."""
    store, ids, _ = source
    pg = TrajectoryStore(new_db_url(request, "postgresql", tmp_path))
    back = TrajectoryStore(f"sqlite:///{tmp_path}/back.db")
    try:
        for kind in ("greedy", "threshold", "running"):
            data = export_run_json(store, ids[kind])
            on_pg = import_run(pg, data)
            hop = export_run_json(pg, on_pg)
            if kind == "running":  # imported as failed: the only change
                expected = json.loads(data)
                expected["run"].update(status="failed", error=RUNNING_IMPORT_ERROR)
                assert json.loads(hop) == expected
            else:
                assert hop == data
                assert_identical(store, ids[kind], pg, on_pg)
            home = import_run(back, hop)
            assert export_run_json(back, home) == hop
            assert_identical(pg, on_pg, back, home)
    finally:
        pg.engine.dispose()
        back.engine.dispose()


@pytest.mark.postgresql
def test_recorded_on_postgresql(request, denoiser, tmp_path):
    """Runs decoded straight into PostgreSQL export, import into SQLite and into the same
    PostgreSQL database, and export again, byte for byte."""
    pg = TrajectoryStore(new_db_url(request, "postgresql", tmp_path))
    lite = TrajectoryStore(f"sqlite:///{tmp_path}/lite.db")
    try:
        outs = [
            decode(PROMPT, denoiser, store=pg, gen_length=G, steps=S, temperature=1.0, seed=2**40),
            decode(PROMPT, denoiser, store=pg, gen_length=G, steps=S, callbacks=[StopAfter(2)]),
        ]
        for out in outs:
            data = export_run_json(pg, out.run_id)
            bundle = json.loads(data)
            assert bundle["run"]["created_at"].endswith("+00:00")
            assert datetime.fromisoformat(bundle["run"]["created_at"]) == pg.get_run(out.run_id)["created_at"].replace(
                tzinfo=UTC
            )
            for other in (lite, pg):
                new_id = import_run(other, data)
                assert export_run_json(other, new_id) == data
                assert_identical(pg, out.run_id, other, new_id)
        assert pg.get_run(outs[0].run_id)["seed"] == 2**40
    finally:
        pg.engine.dispose()
        lite.engine.dispose()
