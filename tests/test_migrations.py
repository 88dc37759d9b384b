"""Schema migrations (explorer/store/migrations/), on SQLite and PostgreSQL.

- A new database is created by the migrations alone and matches the ORM models exactly.
- A database written by the previous release (commit e9573b2, before migrations and before
  run_notes) upgrades with nothing lost: every run, its steps as read_arrays gives them (token
  ids, commit steps, probabilities), its events and branches; a new run then gets a fresh id.
  SQLite: the committed fixture tests/fixtures/release_e9573b2.db. PostgreSQL: a database the
  old code writes in a subprocess. Both compare with what the old code itself reads back, run
  from `git archive e9573b2` (skipped where the repository's history is not available).
- Run ids are never reused after a delete (defect 9), also in an upgraded SQLite database.
- Read-only opens: a read-only file in a read-only directory lists and reads; a database that
  needs an upgrade is refused with the command that upgrades it; nothing is created.

Remake the fixture (it must be written by the old code, not this one):

    git worktree add /tmp/prev e9573b2
    PYTHONPATH=/tmp/prev python -c "$(python -c 'import tests.test_migrations as t; print(t.OLD_RELEASE_SCRIPT)')" \\
        write sqlite:///$PWD/tests/fixtures/release_e9573b2.db
    git worktree remove /tmp/prev
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import new_db_url
from sqlalchemy import create_engine, func, inspect, select

from explorer.api import decode
from explorer.store import migrations, sweeps  # noqa: F401  (sweeps: its tables are in Base.metadata)
from explorer.store.database import Base, Event, Run, StoreError, TrajectoryStore

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "release_e9573b2.db"
PREVIOUS_RELEASE = "e9573b2"

# Run by the previous release's code (PYTHONPATH = its tree): `write URL` decodes two short runs
# on the embedded model and branches one into a fresh database; both modes then print, as JSON,
# every run as that code reads it back (row, read_arrays, events).
OLD_RELEASE_SCRIPT = r"""
import json, sys
from sqlalchemy import select
from explorer.api import branch, decode
from explorer.branching.edits import Force
from explorer.store.database import Event, TrajectoryStore

mode, url = sys.argv[1], sys.argv[2]
store = TrajectoryStore(url)
if mode == "write":
    a = decode("once upon a time", "embedded", store=store, gen_length=16, steps=8, seed=1)
    b = decode("the cat saw a", "embedded", store=store, gen_length=12, steps=6, seed=2, strategy="random")
    branch(a.run_id, 3, store, [Force(10, int(b.token_ids[0]))], seed=3)


def floats(array):
    return [None if x != x else float(x) for x in array.ravel().tolist()]


out = []
for run in sorted(store.list_runs(limit=1000), key=lambda r: r["id"]):
    arrays = store.read_arrays(run["id"])
    with store.session() as s:
        events = s.execute(
            select(Event.step, Event.position, Event.kind, Event.token_id, Event.token_text, Event.prob)
            .where(Event.run_id == run["id"]).order_by(Event.id)
        ).all()
    out.append({
        "run": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()},
        "argmax": arrays.argmax.tolist(),
        "tokens": arrays.tokens.tolist(),
        "commit_step": arrays.commit_step.tolist(),
        "commit_prob": floats(arrays.commit_prob),
        "confidence": floats(arrays.confidence),
        "commits": [arrays.commits.step.tolist(), arrays.commits.position.tolist(),
                    arrays.commits.token.tolist(), floats(arrays.commits.prob)],
        "edits": [list(map(int, r)) for r in arrays.edits.rows()] if hasattr(arrays.edits, "rows") else None,
        "events": [list(e) for e in events],
    })
print(json.dumps(out))
"""


def _floats(array) -> list:
    return [None if x != x else float(x) for x in np.asarray(array).ravel().tolist()]


def new_dump(store: TrajectoryStore) -> list[dict]:
    """The same dump as OLD_RELEASE_SCRIPT's, read by today's store."""
    out = []
    for run in sorted(store.list_runs(limit=1000), key=lambda r: r["id"]):
        arrays = store.read_arrays(run["id"])
        with store.session() as s:
            events = s.execute(
                select(Event.step, Event.position, Event.kind, Event.token_id, Event.token_text, Event.prob)
                .where(Event.run_id == run["id"])
                .order_by(Event.id)
            ).all()
        out.append(
            {
                "run": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()},
                "argmax": arrays.argmax.tolist(),
                "tokens": arrays.tokens.tolist(),
                "commit_step": arrays.commit_step.tolist(),
                "commit_prob": _floats(arrays.commit_prob),
                "confidence": _floats(arrays.confidence),
                "commits": [
                    arrays.commits.step.tolist(),
                    arrays.commits.position.tolist(),
                    arrays.commits.token.tolist(),
                    _floats(arrays.commits.prob),
                ],
                "edits": [list(map(int, r)) for r in arrays.edits.rows()],
                "events": [list(e) for e in events],
            }
        )
    return out


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory) -> Path:
    """The previous release's explorer/ and models/, from git (skip without the history)."""
    target = tmp_path_factory.mktemp("release_e9573b2")
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "explorer", "models"],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"the previous release's code is not available from git: {exc}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_old(old_tree: Path, mode: str, url: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(old_tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", OLD_RELEASE_SCRIPT, mode, url],
        cwd=old_tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_runs(old: list[dict], new: list[dict]) -> None:
    assert [d["run"]["id"] for d in new] == [d["run"]["id"] for d in old]
    for before, after in zip(old, new):
        for key, value in before["run"].items():  # every column the old release had, unchanged
            assert after["run"][key] == value, (before["run"]["id"], key)
        for key in ("argmax", "tokens", "commit_step", "commit_prob", "confidence", "commits", "events"):
            assert after[key] == before[key], (before["run"]["id"], key)
        if before["edits"] is not None:
            assert after["edits"] == before["edits"]


def schema_diff(engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


# ---- a new database ------------------------------------------------------------------------------


def test_new_database_is_created_by_the_migrations(db_url):
    store = TrajectoryStore(db_url)
    assert store.schema_revision() == migrations.head()
    assert schema_diff(store.engine) == []  # the migrations build exactly the ORM's schema
    assert set(inspect(store.engine).get_table_names()) >= {"runs", "steps", "events", "run_notes", "alembic_version"}
    TrajectoryStore(db_url)  # a second open: already at head, nothing to do
    store.engine.dispose()


def test_ids_never_reused(db_url, denoiser):
    """Defect 9: create 3 runs, delete the newest, create one: it gets id 4, not 3."""
    store = TrajectoryStore(db_url)
    ids = [decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id for _ in range(3)]
    assert ids == [1, 2, 3]
    assert store.delete_run(3)
    assert decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id == 4
    assert store.delete_run(4) and store.delete_run(2)
    store.engine.dispose()
    store = TrajectoryStore(db_url)  # reopened: the counter is stored, not kept in memory
    assert decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id == 5
    store.engine.dispose()


# ---- a database of the previous release ---------------------------------------------------------------


def _legacy_copy(tmp_path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    os.chmod(path, 0o644)
    return path


def test_fixture_is_the_previous_release(tmp_path):
    """The fixture is a pre-migration database: no alembic_version, no run_notes, 3 runs, a branch."""
    with sqlite3.connect(_legacy_copy(tmp_path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"runs", "steps", "events"} <= tables
        assert not tables & {"alembic_version", "run_notes"}
        assert db.execute("SELECT id, parent_run_id, branch_step FROM runs ORDER BY id").fetchall() == [
            (1, None, None),
            (2, None, None),
            (3, 1, 3),
        ]
    assert FIXTURE.stat().st_size < 500_000


def _raw_sqlite(path: Path) -> dict:
    """What the file holds, read with sqlite3 alone (no code of either release)."""
    with sqlite3.connect(path) as db:
        return {
            "runs": db.execute("SELECT id, status, model, prompt, seed, n_steps, final_text FROM runs").fetchall(),
            "steps": db.execute("SELECT run_id, step, argmax, confidence FROM steps ORDER BY 1, 2").fetchall(),
            "events": db.execute("SELECT * FROM events ORDER BY id").fetchall(),
        }


def test_previous_release_sqlite_upgrades_with_nothing_lost(tmp_path, denoiser):
    path = _legacy_copy(tmp_path)
    before = _raw_sqlite(path)
    store = TrajectoryStore(f"sqlite:///{path}")
    assert store.schema_revision() == migrations.head()
    assert schema_diff(store.engine) == []
    after = _raw_sqlite(path)
    assert after == before  # every row of every table, byte for byte
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 3
    arrays = store.read_arrays(1)
    steps = [r for r in before["steps"] if r[0] == 1]
    np.testing.assert_array_equal(arrays.argmax, np.stack([np.frombuffer(r[2], "<i4") for r in steps], axis=1))
    assert store.get_run(3)["parent_run_id"] == 1 and store.get_run(3)["branch_step"] == 3
    assert store.set_notes(1, "old, kept", "a note")["tags"] == ["old", "kept"]  # the new table works
    # The newest run deleted, a new one: a fresh id (the AUTOINCREMENT rebuild kept the counter).
    assert store.delete_run(3)
    assert decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id == 4
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    store.engine.dispose()


def test_previous_release_sqlite_reads_as_the_old_code_read_it(tmp_path, old_tree):
    reference = tmp_path / "reference.db"
    shutil.copy(FIXTURE, reference)
    old = run_old(old_tree, "dump", f"sqlite:///{reference}")
    store = TrajectoryStore(f"sqlite:///{_legacy_copy(tmp_path)}")
    assert len(old) == 3
    assert_same_runs(old, new_dump(store))
    store.engine.dispose()


@pytest.mark.postgresql
def test_previous_release_postgresql_upgrades_with_nothing_lost(request, tmp_path, old_tree, denoiser):
    url = new_db_url(request, "postgresql", tmp_path)
    old = run_old(old_tree, "write", url)
    assert [d["run"]["id"] for d in old] == [1, 2, 3] and old[2]["run"]["parent_run_id"] == 1
    engine = create_engine(url)
    with engine.connect() as connection:
        assert migrations.current_revision(connection) is None
        assert "run_notes" not in inspect(connection).get_table_names()
    engine.dispose()
    with pytest.raises(StoreError, match="needs a schema upgrade"):
        TrajectoryStore(url, read_only=True)  # read-only: refused, left as it is
    store = TrajectoryStore(url)
    assert store.schema_revision() == migrations.head()
    assert schema_diff(store.engine) == []
    assert_same_runs(old, new_dump(store))
    assert store.delete_run(3)
    assert decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id == 4
    store.engine.dispose()


# ---- read-only opens --------------------------------------------------------------------------------


READ_ONLY_READER = r"""
import json, sys
from explorer.store.database import StoreError, TrajectoryStore
url = sys.argv[1]
try:
    TrajectoryStore(url)
    writable = "opened"
except StoreError as exc:
    writable = str(exc)
reader = TrajectoryStore(url, read_only=True)
runs = reader.list_runs()
print(json.dumps({"writable": writable, "ids": [r["id"] for r in runs],
                  "shape": list(reader.read_arrays(runs[0]["id"]).argmax.shape)}))
"""


def _read_only_in_process(url: str, monkeypatch) -> dict:
    """READ_ONLY_READER's result here, with os.access answering as for an unprivileged user."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not mode & os.W_OK)
    try:
        TrajectoryStore(url)
        writable = "opened"
    except StoreError as exc:
        writable = str(exc)
    reader = TrajectoryStore(url, read_only=True)
    runs = reader.list_runs()
    shape = list(reader.read_arrays(runs[0]["id"]).argmax.shape)
    result = {"writable": writable, "ids": [r["id"] for r in runs], "shape": shape}
    reader.engine.dispose()
    monkeypatch.undo()
    return result


def test_read_only_file_in_read_only_directory(tmp_path, denoiser, monkeypatch):
    """A database file chmod 444 in a directory chmod 555 lists and reads (as root, the reader
    runs as `nobody`, whom the permissions bind); a writable open is refused; no file appears."""
    directory = Path(tempfile.mkdtemp(prefix="explorer-ro-"))  # under /tmp: reachable by `nobody`
    path = directory / "runs.db"
    url = f"sqlite:///{path}"
    store = TrajectoryStore(url)
    run_id = decode("once upon a time", denoiser, store=store, gen_length=8, steps=2).run_id
    store.engine.dispose()
    path.chmod(0o444)
    directory.chmod(0o555)
    as_nobody = None
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        as_nobody = lambda: (os.setgid(nobody.pw_gid), os.setuid(nobody.pw_uid))  # noqa: E731
    try:
        try:
            done = subprocess.run(
                [sys.executable, "-c", READ_ONLY_READER, url],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(directory), "OMP_NUM_THREADS": "1"},
                preexec_fn=as_nobody,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except PermissionError:  # root, and `nobody` cannot run this Python: the permissions simulated
            result = _read_only_in_process(url, monkeypatch)
        else:
            assert done.returncode == 0, done.stderr[-3000:]
            result = json.loads(done.stdout.strip().splitlines()[-1])
        assert "is not writable" in result["writable"]
        assert result["ids"] == [run_id] and result["shape"] == [8, 2]
        assert sorted(p.name for p in directory.iterdir()) == ["runs.db"]
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


def test_read_only_open_creates_and_migrates_nothing(tmp_path):
    missing = tmp_path / "none.db"
    with pytest.raises(StoreError, match="no database"):
        TrajectoryStore(f"sqlite:///{missing}", read_only=True)
    assert not missing.exists()
    path = _legacy_copy(tmp_path)
    before = path.read_bytes()
    with pytest.raises(StoreError) as refused:
        TrajectoryStore(f"sqlite:///{path}", read_only=True)
    message = str(refused.value)
    assert "\n" not in message and "python -m explorer.store.migrations --db sqlite:///" in message
    assert path.read_bytes() == before  # (SQLite's WAL readers may leave old.db-wal/-shm, empty)
    with sqlite3.connect(path) as db:
        assert "alembic_version" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    # The command named upgrades it; then a read-only open works.
    done = subprocess.run(
        [sys.executable, "-m", "explorer.store.migrations", "--db", f"sqlite:///{path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert migrations.head() in done.stdout
    assert len(TrajectoryStore(f"sqlite:///{path}", read_only=True).list_runs()) == 3
