"""The trajectory store through TrajectoryStore, on both backends: a real SQLite file under
tmp_path and a database of its own on a throwaway PostgreSQL server (tests/pg_server.py);
tests taking `db_url` (or `store`) run once on each (conftest.py).

Covers: a real decode's round trip (run row, config JSON, step summaries, read_arrays), the
status lifecycle (completed / cancelled / failed / mark_failed), deletion (and the database's
own cascades), list_runs filters, UTC timestamps whatever the server's time zone, 64-bit seeds,
and StoreWriter's batching. SQLite only: the pragmas, URL resolution and the data directory,
unwritable locations.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from conftest import BACKENDS, new_db_url
from sqlalchemy import delete, func, select, text
from synthetic_runs import StopAfter

from explorer.api import decode
from explorer.decoding.callbacks import RunStart
from explorer.decoding.config import DecodeConfig
from explorer.decoding.engine import run_decode
from explorer.decoding.records import DecodeResult, StepRecord
from explorer.store import database as store_module
from explorer.store.database import DB_URL_ENV, Event, Run, Step, StoreError, StoreWriter, TrajectoryStore, resolve_url

PROMPT = "once upon a time"
G, S = 32, 8


@pytest.fixture
def store(db_url) -> TrajectoryStore:
    s = TrajectoryStore(db_url)
    yield s
    s.engine.dispose()


def _count(store: TrajectoryStore, model, run_id: int) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.run_id == run_id))


# ---- a real decode, round-tripped ---------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def stored_decode(request, denoiser, tmp_path_factory):
    """One real decode (gen 32, steps 8) recorded in a fresh database, shared by the module."""
    store = TrajectoryStore(new_db_url(request, request.param, tmp_path_factory.mktemp("roundtrip")))
    out = decode(PROMPT, denoiser, store=store, gen_length=G, steps=S, strategy="low_confidence")
    yield store, out
    store.engine.dispose()


def test_run_row_round_trip(stored_decode):
    store, out = stored_decode
    assert isinstance(out.run_id, int)
    run = store.get_run(out.run_id)
    assert run["status"] == "completed"
    assert run["n_steps"] == S == out.result.n_steps == len(out.steps)
    assert run["final_token_ids"] == out.token_ids
    assert run["final_text"] == out.result.text
    assert run["error"] is None
    assert run["finished_at"] is not None
    assert run["prompt"] == PROMPT and run["prompt_ids"] == out.prompt_ids
    assert run["model"] == "embedded" and run["strategy"] == "low_confidence"
    assert run["gen_length"] == G and run["mask_id"] == out.mask_id
    # Stored as run: the model-dependent default (violations on for the embedded model) resolved.
    expected = DecodeConfig(gen_length=G, steps=S, strategy="low_confidence", violations=True)
    assert DecodeConfig(**run["config"]) == expected
    assert DecodeConfig.from_json(expected.to_json()) == expected
    assert [r["id"] for r in store.list_runs()] == [out.run_id]
    assert store.count_runs() == 1


def test_step_summaries_match_records(stored_decode):
    store, out = stored_decode
    summaries = store.step_summaries(out.run_id)
    assert [s["step"] for s in summaries] == list(range(S))
    for summary, record in zip(summaries, out.steps, strict=True):
        assert summary["block"] == record.block
        assert summary["committed"] == record.committed.tolist()
        assert summary["tokens"] == record.tokens.tolist()
        assert summary["probs"] == pytest.approx(record.probs.tolist(), rel=1e-6)
        assert len(summary["committed"]) == G // S


def test_read_arrays(stored_decode):
    store, out = stored_decode
    arrays = store.read_arrays(out.run_id)
    records = out.steps
    for name in ("argmax", "confidence", "entropy", "margin", "tokens"):
        assert getattr(arrays, name).shape == (G, S), name
    assert arrays.commit_step.shape == (G,)
    assert arrays.steps.tolist() == list(range(S))
    assert arrays.n_committed.tolist() == [r.n_committed for r in records]

    for s, r in enumerate(records):
        # stored as float16: equal to the records' values rounded to float16
        np.testing.assert_array_equal(arrays.confidence[:, s], r.confidence.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(arrays.entropy[:, s], r.entropy.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(arrays.margin[:, s], r.margin.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(arrays.argmax[:, s], r.argmax)
        assert (arrays.commit_step[r.committed] == s).all()

    # every position is committed exactly once, by the step the records say
    expected_commit = np.full(G, -1)
    for r in records:
        assert (expected_commit[r.committed] == -1).all()
        expected_commit[r.committed] = r.step
    np.testing.assert_array_equal(arrays.commit_step, expected_commit)
    assert (arrays.commit_step >= 0).all()

    # the sequence after each step: the final tokens exactly where committed so far
    np.testing.assert_array_equal(arrays.tokens[:, -1], np.asarray(out.token_ids))
    committed_so_far: set[int] = set()
    for s, r in enumerate(records):
        committed_so_far |= set(r.committed.tolist())
        unmasked = set(np.flatnonzero(arrays.tokens[:, s] != out.mask_id).tolist())
        assert unmasked == committed_so_far, s
    with pytest.raises(KeyError):
        store.read_arrays(out.run_id + 1000)


def test_sqlite_pragmas(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path}/t.db")
    try:
        store.create_run(_run_start())
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    finally:
        store.engine.dispose()
    # and persisted in the file: a plain sqlite3 connection sees WAL too
    con = sqlite3.connect(tmp_path / "t.db")
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        con.close()


def test_backend_of_the_store(store, db_url):
    """The parametrization really reaches both databases (and PostgreSQL through psycopg)."""
    assert store.engine.dialect.name == db_url.split(":")[0].split("+")[0]
    if store.engine.dialect.name == "postgresql":
        assert store.engine.dialect.driver == "psycopg"
        with store.engine.connect() as conn:
            assert conn.execute(text("SHOW TimeZone")).scalar() != "UTC"  # see test_timestamps_are_utc


# ---- the status lifecycle ------------------------------------------------------------------------


def test_cancelled_run_keeps_its_steps(denoiser, store):
    stopper = StopAfter(2)
    out = decode(PROMPT, denoiser, store=store, callbacks=[stopper], gen_length=G, steps=S)
    assert out.result.status == "cancelled"
    assert len(out.steps) == 3
    run = store.get_run(out.run_id)
    assert run["status"] == "cancelled"
    assert run["n_steps"] == 3
    assert run["finished_at"] is not None and run["error"] is None
    assert run["final_token_ids"] == out.token_ids
    assert out.token_ids.count(out.mask_id) == G - 3 * (G // S)
    assert [s["step"] for s in store.step_summaries(out.run_id)] == [0, 1, 2]
    assert _count(store, Step, out.run_id) == 3
    assert _count(store, Event, out.run_id) == 3 * (G // S)
    arrays = store.read_arrays(out.run_id)
    assert arrays.tokens.shape == (G, 3)
    assert int((arrays.commit_step == -1).sum()) == G - 3 * (G // S)


class FailingDenoiser:
    """The embedded denoiser whose forward pass raises on its `fail_on`-th call (1-based)."""

    def __init__(self, inner, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        for name in ("name", "mask_id", "context_length", "device"):
            setattr(self, name, getattr(inner, name))

    def logits(self, ids):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated forward failure")
        return self.inner.logits(ids)

    def encode(self, text):
        return self.inner.encode(text)

    def decode(self, ids):
        return self.inner.decode(ids)

    def token_text(self, token_id):
        return self.inner.token_text(token_id)


def test_failed_run_records_error_and_steps(denoiser, store):
    failing = FailingDenoiser(denoiser, fail_on=4)
    with pytest.raises(RuntimeError, match="simulated forward failure"):
        decode(PROMPT, failing, store=store, gen_length=G, steps=S)
    (run,) = store.list_runs()
    assert run["status"] == "failed"
    assert "RuntimeError" in run["error"] and "simulated forward failure" in run["error"]
    assert run["finished_at"] is not None
    assert run["n_steps"] == 3
    assert [s["step"] for s in store.step_summaries(run["id"])] == [0, 1, 2]
    assert _count(store, Event, run["id"]) == 3 * (G // S)
    assert run["final_token_ids"].count(denoiser.mask_id) == G - 3 * (G // S)


def test_failed_run_through_run_decode_with_batching(denoiser, store):
    """Steps already flushed and those still pending are both kept when the engine raises."""
    prompt_ids = denoiser.encode(PROMPT)
    writer = StoreWriter(store, denoiser.token_text, batch_steps=2, max_delay=3600)
    failing = FailingDenoiser(denoiser, fail_on=6)  # steps 0..4 done, 0..3 flushed, 4 pending
    with pytest.raises(RuntimeError):
        run_decode(failing, prompt_ids, DecodeConfig(gen_length=G, steps=S), [writer], prompt_text=PROMPT)
    run = store.get_run(writer.run_id)
    assert run["status"] == "failed" and run["n_steps"] == 5
    assert _count(store, Step, writer.run_id) == 5


def _run_start(mask_id: int = 1) -> RunStart:
    return RunStart(
        model="embedded",
        prompt=PROMPT,
        prompt_ids=[1, 2, 3],
        config=DecodeConfig(gen_length=G, steps=S),
        mask_id=mask_id,
        device="cpu",
    )


def test_mark_failed_only_touches_running_runs(store):
    run_id = store.create_run(_run_start())
    assert store.get_run(run_id)["status"] == "running"
    store.mark_failed(run_id, "worker killed")
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == "worker killed"
    assert run["finished_at"] is not None

    done = store.create_run(_run_start())
    store.finish_run(done, DecodeResult("completed", [5] * G, "x", S))
    store.mark_failed(done, "too late")
    assert store.get_run(done)["status"] == "completed"
    assert store.get_run(done)["error"] is None
    store.mark_failed(10_000, "no such run")  # a missing run is ignored


def test_delete_run_removes_steps_and_events(denoiser, store):
    keep = decode(PROMPT, denoiser, store=store, gen_length=G, steps=S).run_id
    gone = decode(PROMPT, denoiser, store=store, gen_length=G, steps=S).run_id
    assert _count(store, Step, gone) == S and _count(store, Event, gone) == G
    assert store.delete_run(gone) is True
    assert store.get_run(gone) is None
    assert _count(store, Step, gone) == 0 and _count(store, Event, gone) == 0
    assert store.delete_run(gone) is False
    # the other run is untouched
    assert _count(store, Step, keep) == S and _count(store, Event, keep) == G
    assert [r["id"] for r in store.list_runs()] == [keep]


# ---- where the database lives ------------------------------------------------------------------


def test_resolve_url_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    default_dir = tmp_path / "default-data"
    monkeypatch.setattr(store_module, "DEFAULT_DATA_DIR", default_dir)
    assert resolve_url() == f"sqlite:///{default_dir / 'trajectories.db'}"
    assert resolve_url(data_dir=tmp_path / "d") == f"sqlite:///{tmp_path / 'd' / 'trajectories.db'}"
    monkeypatch.setenv(DB_URL_ENV, f"sqlite:///{tmp_path}/env.db")
    assert resolve_url() == f"sqlite:///{tmp_path}/env.db"
    assert resolve_url(data_dir=tmp_path / "d") == f"sqlite:///{tmp_path}/env.db"
    assert resolve_url(f"sqlite:///{tmp_path}/flag.db") == f"sqlite:///{tmp_path}/flag.db"
    assert resolve_url(f"sqlite:///{tmp_path}/flag.db", tmp_path / "d") == f"sqlite:///{tmp_path}/flag.db"
    monkeypatch.setenv(DB_URL_ENV, "")  # empty means unset
    assert resolve_url() == f"sqlite:///{default_dir / 'trajectories.db'}"


def test_store_uses_env_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv(DB_URL_ENV, f"sqlite:///{tmp_path}/env.db")
    env_store = TrajectoryStore()
    assert env_store.url == f"sqlite:///{tmp_path}/env.db"
    env_store.create_run(_run_start())
    env_store.engine.dispose()
    assert (tmp_path / "env.db").exists()
    flag_store = TrajectoryStore(f"sqlite:///{tmp_path}/flag.db")
    assert flag_store.count_runs() == 0
    flag_store.engine.dispose()


def test_data_directory_is_created(tmp_path, monkeypatch):
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    default_dir = tmp_path / "not" / "yet" / "there"
    monkeypatch.setattr(store_module, "DEFAULT_DATA_DIR", default_dir)
    s = TrajectoryStore()
    assert default_dir.is_dir()
    assert s.url == f"sqlite:///{default_dir / 'trajectories.db'}"
    run_id = s.create_run(_run_start())
    assert s.get_run(run_id)["status"] == "running"
    s.engine.dispose()
    assert (default_dir / "trajectories.db").is_file()

    explicit = tmp_path / "explicit" / "dir"
    s2 = TrajectoryStore(data_dir=explicit)
    assert (explicit / "trajectories.db").is_file()
    s2.engine.dispose()


def test_unwritable_location_raises_store_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, not a directory")
    with pytest.raises(StoreError, match="afile"):
        TrajectoryStore(f"sqlite:///{blocker}/x.db")
    with pytest.raises(StoreError):
        TrajectoryStore(data_dir=blocker / "sub")
    assert blocker.read_text().startswith("a regular file")


# ---- StoreWriter batching ------------------------------------------------------------------------


def _synthetic_record(step: int, position: int, rng: np.random.Generator, g: int = G) -> StepRecord:
    conf = rng.random(g, dtype=np.float32)
    return StepRecord(
        step=step,
        block=0,
        committed=np.array([position], dtype=np.int64),
        tokens=np.array([rng.integers(3, 100)], dtype=np.int64),
        probs=conf[[position]],
        top_ids=rng.integers(3, 100, size=(1, 3)).astype(np.int64),
        top_probs=np.sort(rng.random((1, 3), dtype=np.float32))[:, ::-1].copy(),
        argmax=rng.integers(3, 100, size=g).astype(np.int32),
        confidence=conf,
        entropy=rng.random(g, dtype=np.float32) * 4,
        margin=rng.random(g, dtype=np.float32),
        masked_before=g - step,
        seconds=0.001,
    )


def test_store_writer_batches_steps(store):
    rng = np.random.default_rng(0)
    writer = StoreWriter(store, lambda t: f"w{t}", batch_steps=4, max_delay=3600)
    writer.on_start(_run_start())
    run_id = writer.run_id
    assert store.get_run(run_id)["status"] == "running"
    records = [_synthetic_record(i, i, rng) for i in range(10)]
    seen = []
    for record in records:
        writer.on_step(record)
        seen.append(_count(store, Step, run_id))
    # nothing until 4 are pending, then a batch of 4
    assert seen == [0, 0, 0, 4, 4, 4, 4, 8, 8, 8]
    assert store.get_run(run_id)["n_steps"] == 8
    assert _count(store, Event, run_id) == 8
    writer.flush()
    assert _count(store, Step, run_id) == 10 and _count(store, Event, run_id) == 10
    writer.flush()  # nothing pending: a no-op
    assert _count(store, Step, run_id) == 10
    writer.on_end(DecodeResult("cancelled", [0] * G, "", 10))
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and run["n_steps"] == 10

    arrays = store.read_arrays(run_id)
    assert arrays.confidence.shape == (G, 10)
    np.testing.assert_array_equal(arrays.commit_step[:10], np.arange(10))
    assert (arrays.commit_step[10:] == -1).all()
    summaries = store.step_summaries(run_id)
    assert [s["token_texts"] for s in summaries] == [[f"w{r.tokens[0]}"] for r in records]


def test_store_writer_on_end_flushes_pending(store):
    rng = np.random.default_rng(1)
    writer = StoreWriter(store, str, batch_steps=16, max_delay=3600)
    writer.on_start(_run_start())
    for i in range(5):
        writer.on_step(_synthetic_record(i, i, rng))
    assert _count(store, Step, writer.run_id) == 0
    writer.on_end(DecodeResult("completed", [0] * G, "", 5))
    assert _count(store, Step, writer.run_id) == 5
    assert store.get_run(writer.run_id)["status"] == "completed"


def test_store_writer_flushes_after_max_delay(store):
    rng = np.random.default_rng(2)
    writer = StoreWriter(store, str, batch_steps=1000, max_delay=-1.0)  # every step is "late"
    writer.on_start(_run_start())
    for i in range(3):
        writer.on_step(_synthetic_record(i, i, rng))
        assert _count(store, Step, writer.run_id) == i + 1


def test_store_writer_without_start_ignores_end(store):
    StoreWriter(store, str).on_end(DecodeResult("failed", [], "", 0, error="x"))
    assert store.count_runs() == 0


def test_config_json_round_trip_non_default(denoiser, store):
    config = DecodeConfig(
        gen_length=G,
        steps=S,
        block_length=8,
        strategy="margin",
        temperature=0.5,
        seed=7,
        energies=(("uni", 0.5), ("ar", 1.0)),
        energy_window=(0.2, 0.9),
        violations=False,
    )
    out = decode(PROMPT, denoiser, config=config, store=store)
    stored = store.get_run(out.run_id)["config"]
    assert DecodeConfig(**stored) == config
    assert {f.name for f in dataclasses.fields(DecodeConfig)} == set(stored)
    assert store.get_run(out.run_id)["seed"] == 7
    assert {s["block"] for s in store.step_summaries(out.run_id)} == {0, 1, 2, 3}


# ---- what differs between databases ---------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_timestamps_are_utc(store):
    """Stored and read back as naive UTC on both backends, whatever the server's time zone
    (the throwaway PostgreSQL server runs at UTC+05:30) and whatever zone a datetime is given in."""
    before = _utcnow()
    run_id = store.create_run(_run_start())
    store.finish_run(run_id, DecodeResult("completed", [5] * G, "x", S))
    after = _utcnow()
    run = store.get_run(run_id)
    for name in ("created_at", "finished_at"):
        assert run[name].tzinfo is None, name
        assert before - timedelta(seconds=1) <= run[name] <= after + timedelta(seconds=1), (name, run[name])
    assert run["created_at"] <= run["finished_at"]
    # a datetime in another zone is converted to UTC, a naive one taken as UTC
    kolkata = timezone(timedelta(hours=5, minutes=30))
    with store.session() as s, s.begin():
        s.get(Run, run_id).created_at = datetime(2026, 1, 1, 5, 30, tzinfo=kolkata)
        s.get(Run, run_id).finished_at = datetime(2026, 1, 1, 0, 0, 1)
    run = store.get_run(run_id)
    assert run["created_at"] == datetime(2026, 1, 1, 0, 0) and run["finished_at"] == datetime(2026, 1, 1, 0, 0, 1)
    assert [r["id"] for r in store.list_runs(since="2026-01-01")] == [run_id]
    assert store.list_runs(since="2026-01-01T00:00:01") == []
    assert [r["id"] for r in store.list_runs(since="2026-01-01T05:30:00+05:30")] == [run_id]


def test_list_runs_filters(store):
    def add(
        prompt: str,
        model: str = "embedded",
        strategy: str = "low_confidence",
        text: str | None = None,
        status: str = "completed",
    ) -> int:
        config = DecodeConfig(gen_length=G, steps=S, strategy=strategy)
        run_id = store.create_run(
            RunStart(model=model, prompt=prompt, prompt_ids=[1], config=config, mask_id=1, device="cpu")
        )
        if status != "running":
            store.finish_run(run_id, DecodeResult(status, [5] * G, text or "", S))
        return run_id

    a = add("Once upon a time", text="there was a Fox")
    b = add("the quick brown", model="other", strategy="margin", text="jumps over")
    c = add("100% sure_thing", status="cancelled")
    d = add("still going", status="running")
    ids = lambda **kw: [r["id"] for r in store.list_runs(**kw)]  # noqa: E731
    assert ids() == [d, c, b, a]  # newest first
    assert ids(limit=2) == [d, c]
    assert ids(status="completed") == [b, a] and ids(status="running") == [d]
    assert ids(model="other") == [b] and ids(strategy="margin") == [b]
    assert ids(model="embedded", status="cancelled") == [c]
    assert ids(text="ONCE") == [a] and ids(text="fox") == [a]  # case-insensitive, prompt or text
    assert ids(text="o") == [d, b, a] and ids(text="SURE_") == [c] and ids(text="nowhere") == []
    today = _utcnow().date()
    assert ids(since=today.isoformat()) == [d, c, b, a]
    assert ids(since=(today + timedelta(days=1)).isoformat()) == []
    with pytest.raises(ValueError, match="'since' must be a date"):
        store.list_runs(since="last week")


def test_large_seed_round_trip(store):
    """The seed is any 0..2^63-1 (DecodeConfig's range): a 64-bit column, also on PostgreSQL."""
    config = DecodeConfig(gen_length=G, steps=S, seed=2**63 - 1)
    run_id = store.create_run(
        RunStart(model="embedded", prompt=PROMPT, prompt_ids=[1, 2], config=config, mask_id=1, device="cpu")
    )
    run = store.get_run(run_id)
    assert run["seed"] == 2**63 - 1 and run["config"]["seed"] == 2**63 - 1


def test_database_cascades_and_token_texts(store):
    """Deleting a run row in SQL removes its steps and events (ON DELETE CASCADE: SQLite needs
    foreign_keys=ON) and unlinks its branches (ON DELETE SET NULL)."""
    rng = np.random.default_rng(3)
    run_ids = []
    for _ in range(2):
        writer = StoreWriter(store, lambda t: f"tok{t}", batch_steps=2)
        writer.on_start(_run_start())
        for i in range(4):
            writer.on_step(_synthetic_record(i, i, rng))
        writer.on_end(DecodeResult("completed", [0] * G, "", 4))
        run_ids.append(writer.run_id)
    parent, child = run_ids
    assert store.token_texts(parent) == {
        int(t): f"tok{t}" for t in {e for s in store.step_summaries(parent) for e in s["tokens"]}
    }
    with store.session() as s, s.begin():
        s.get(Run, child).parent_run_id, s.get(Run, child).branch_step = parent, 2
    with store.engine.begin() as conn:
        assert conn.execute(delete(Run).where(Run.id == parent)).rowcount == 1
    assert _count(store, Step, parent) == 0 and _count(store, Event, parent) == 0
    child_run = store.get_run(child)
    assert child_run["parent_run_id"] is None and child_run["branch_step"] == 2
    assert _count(store, Step, child) == 4 and _count(store, Event, child) == 4
    assert store.token_texts(parent) == {}
