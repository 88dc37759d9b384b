"""The trajectory store: SQLAlchemy 2.0 ORM over SQLite or PostgreSQL (or any SQLAlchemy URL).

Tables: `runs` (one per decode), `steps` (per-position arrays as compact typed blobs) and
`events` (one row per commit, revision, re-mask or edit, for SQL across runs). A *revision*
(XDLM: a visible token changed into another) is a commit at a position that held a token; it is
stored with kind `revise`, so `COMMIT_EVENTS` covers both kinds wherever commits are read. An
event's `prob` is NULL where it is unknown (a run recorded without logits): NaN is written as
NULL on every backend and NULL is read back as NaN.
`StoreWriter` is the engine callback that writes a run: its row first (status `running`), steps
in batched transactions, then the final status. `TrajectoryStore.read_arrays` reads a run back
as (position x step) arrays.

The same code runs on every backend (the tests run it on SQLite and on PostgreSQL through
psycopg, `postgresql+psycopg://user@host/db`): times are stored as naive UTC (`UTCDateTime`,
independent of the server's or session's time zone) and read back naive UTC; the seed is a
64-bit column (DecodeConfig allows 0..2^63-1); SQLite gets its pragmas (WAL, foreign keys).

The schema is versioned with Alembic (explorer/store/migrations/): a writable open brings any
database, new or written by an earlier release, to the newest revision; a read-only open
(`read_only=True`, for commands that only read) creates and migrates nothing and refuses a
database that needs an upgrade. Run ids are never reused (AUTOINCREMENT on SQLite, a sequence on
PostgreSQL). A running run records its owner (process id, host name) and a heartbeat that the
writer refreshes; `recover_interrupted` marks the runs whose owner is gone as `interrupted`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import NullPool

from explorer.decoding.callbacks import Callback, RunStart
from explorer.decoding.records import DecodeResult, StepExtras, StepRecord
from explorer.decoding.resume import EDIT_EVENTS, Origin
from explorer.store import migrations  # its scripts import this module when Alembic runs them, not before
from explorer.store.arrays import Commits, Edits, Remasks, RunArrays, assemble, fit_top, revised_flags

DEFAULT_DATA_DIR = Path(os.environ.get("EXPLORER_DATA_DIR", Path.home() / ".diffusion-explorer"))
DB_URL_ENV = "EXPLORER_DB_URL"
STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")
HEARTBEAT_S = 30.0  # a running run's writer refreshes its heartbeat at least this often
STALE_AFTER_S = 300.0  # a running run whose heartbeat is older is taken as abandoned
MAX_ERROR_CHARS = 2000
COMMIT_EVENTS = ("commit", "revise")  # the events that write a token the model chose


class StoreError(RuntimeError):
    """The database cannot be opened or written; the message says which and why."""


class UTCDateTime(TypeDecorator):
    """A point in time stored as naive UTC (`TIMESTAMP WITHOUT TIME ZONE`, SQLite text).

    An aware datetime is converted to UTC before binding, a naive one is taken as UTC already;
    values come back naive UTC on every backend. Without this, psycopg sends an aware datetime
    as `timestamptz`, which PostgreSQL casts to the *session's* local time, and SQLite keeps the
    wall-clock time and drops the offset.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is not None:  # a driver that returns aware values
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {datetime: UTCDateTime}


class Run(Base):
    __tablename__ = "runs"
    __table_args__: ClassVar[dict] = {"sqlite_autoincrement": True}  # ids never reused (PostgreSQL: SERIAL's sequence)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    strategy: Mapped[str] = mapped_column(String(64), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_ids: Mapped[list] = mapped_column(JSON)
    config: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)  # 0..2^63-1
    gen_length: Mapped[int] = mapped_column(Integer)
    mask_id: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64), default="cpu")
    n_steps: Mapped[int] = mapped_column(Integer, default=0)
    final_text: Mapped[str | None] = mapped_column(Text)
    final_token_ids: Mapped[list | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    branch_step: Mapped[int | None] = mapped_column(Integer)
    # While running: who writes it, and when it last did (migration 0002).
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    owner_host: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]

    steps: Mapped[list[Step]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="Step.step"
    )


class Step(Base):
    __tablename__ = "steps"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    block: Mapped[int] = mapped_column(Integer)
    n_committed: Mapped[int] = mapped_column(Integer)
    masked_before: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    forward_passes: Mapped[int] = mapped_column(Integer, default=1)
    argmax: Mapped[bytes] = mapped_column(LargeBinary)  # int32 (G,)
    confidence: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (G,)
    entropy: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (G,)
    margin: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (G,)
    extras: Mapped[dict | None] = mapped_column(JSON)  # energy candidates, violation matrices, Prophet gap

    run: Mapped[Run] = relationship(back_populates="steps")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_step", "run_id", "step"), Index("ix_events_token", "token_text"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # commit | revise (a visible token changed into another) | remask | force | remask_edit
    kind: Mapped[str] = mapped_column(String(16), default="commit")
    token_id: Mapped[int] = mapped_column(Integer)
    token_text: Mapped[str] = mapped_column(String(200))
    prob: Mapped[float | None] = mapped_column(Float)  # NULL: unknown (a recorded run without logits; migration 0004)
    top_ids: Mapped[list] = mapped_column(JSON)
    top_probs: Mapped[list] = mapped_column(JSON)
    violation_score: Mapped[float | None] = mapped_column(Float)


class RunNote(Base):
    """A person's tags and note on a run, and the teaching preset that started it (if one did).

    A table of its own (created by `create_all`, so a database written before it existed gets it
    on the next start); deleted with its run. `tags` is stored as ",tag one,tag two," (each tag
    between commas, none containing one) so that a tag filter is one LIKE on any backend."""

    __tablename__ = "run_notes"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tags: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    preset: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


MAX_TAG_CHARS = 40
MAX_TAGS = 20
MAX_NOTE_CHARS = 10_000


def parse_tags(tags: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Tags from "a, b ,,c" (or a list): stripped, empty ones dropped, the first of each
    case-insensitive repeat kept, in order. Raises ValueError for a tag over MAX_TAG_CHARS
    characters or more than MAX_TAGS tags (a comma separates tags, so no tag holds one)."""
    parts = tags.split(",") if isinstance(tags, str) else [p for t in tags or () for p in str(t).split(",")]
    out: list[str] = []
    for part in parts:
        tag = " ".join(part.split())
        if not tag or tag.casefold() in (t.casefold() for t in out):
            continue
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(f"the tag {tag[:20]!r}… is {len(tag)} characters; at most {MAX_TAG_CHARS}")
        out.append(tag)
    if len(out) > MAX_TAGS:
        raise ValueError(f"{len(out)} tags; at most {MAX_TAGS} per run")
    return out


def _tags_column(tags: list[str]) -> str:
    return "," + ",".join(tags) + "," if tags else ""


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _notes_dict(row: RunNote | None) -> dict:
    if row is None:
        return {"tags": [], "note": "", "preset": None, "updated_at": None}
    return {
        "tags": [t for t in row.tags.split(",") if t],
        "note": row.note,
        "preset": row.preset,
        "updated_at": UTCDateTime().process_result_value(row.updated_at, None),  # naive UTC, as read back
    }


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def existing_sqlite_file(url: str) -> bool | None:
    """For a SQLite file URL, whether the file exists; None for other databases."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix("sqlite:///")).exists()


def resolve_url(url: str | None = None, data_dir: str | Path | None = None) -> str:
    """The flag, else $EXPLORER_DB_URL, else sqlite:///<data dir>/trajectories.db."""
    if url:
        return url
    if os.environ.get(DB_URL_ENV):
        return os.environ[DB_URL_ENV]
    return f"sqlite:///{Path(data_dir or DEFAULT_DATA_DIR) / 'trajectories.db'}"


def open_engine(url: str, read_only: bool = False) -> Engine:
    """The engine of `url`'s database, its schema brought to the newest revision (created if
    the database is new); StoreError with a one-line reason if impossible.

    `read_only`: for commands that only read. Nothing is created or migrated and the path need
    not be writable (a SQLite file is opened in read-only mode, a file in a read-only directory
    as immutable); a missing SQLite file, or a database that needs a migration, is refused with
    the command that upgrades it."""
    sqlite_path = None
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        sqlite_path = Path(url.removeprefix("sqlite:///"))
    if sqlite_path is not None and not read_only:
        try:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory {sqlite_path.parent}: {exc.strerror}") from None
        if (sqlite_path.exists() and not os.access(sqlite_path, os.W_OK)) or not os.access(sqlite_path.parent, os.W_OK):
            raise StoreError(f"database path {sqlite_path} is not writable")
    if sqlite_path is not None and read_only and not sqlite_path.is_file():
        raise StoreError(f"no database at {sqlite_path}")
    try:
        if sqlite_path is not None and read_only:
            engine = create_engine("sqlite://", creator=lambda: _sqlite_read_only(sqlite_path), poolclass=NullPool)
        else:
            engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_read_only_pragmas if read_only else _sqlite_pragmas)
        reason = migrations.needs_upgrade(engine)
        if reason is not None and read_only:
            engine.dispose()
            raise StoreError(
                f"database {url} needs a schema upgrade ({reason}); opened read-only, it is left as it is: "
                f"run `{migrations.UPGRADE_COMMAND.replace('URL', url)}` with write access to upgrade it"
            )
        if reason is not None:
            if reason.startswith("its schema revision") and "newer" in reason:
                engine.dispose()
                raise StoreError(f"cannot open database {url}: {reason}; use a newer release of this program")
            migrations.upgrade(engine)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot open database {url}: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}"
        ) from None
    except StoreError:
        raise
    except Exception as exc:  # alembic's errors (a revision it does not know, a failed check)
        raise StoreError(f"cannot upgrade database {url}: {exc.__class__.__name__}: {exc}") from None
    return engine


def _sqlite_read_only(path: Path):
    """A read-only pysqlite connection: mode=ro, and immutable=1 when the directory is not
    writable and holds no -shm file (WAL mode could not create one, and nobody can be writing)."""
    import sqlite3
    from urllib.parse import quote

    immutable = not os.access(path.parent, os.W_OK) and not Path(f"{path}-shm").exists()
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _sqlite_read_only_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def violation_scores(record: StepRecord) -> dict[int, float]:
    """position -> violation score (most negative S_ij) of the step's co-committed tokens."""
    violations = record.extras.violations
    if violations is None:
        return {}
    return dict(zip(violations.positions.tolist(), violations.token_scores.tolist()))


def _blob(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def readable_error(status: str, error: str | None) -> tuple[str, str | None]:
    """The (status, error) to store for a run that ended with `error` (as the engine words it,
    "ExceptionName: message"): one line at most MAX_ERROR_CHARS long, never a bare exception
    name. Ctrl-C (KeyboardInterrupt) and a requested exit (SystemExit) end the run `cancelled`;
    a connection to the app that closed under the worker (EOFError, BrokenPipeError) leaves it
    `interrupted`, its steps kept."""
    if error is None:
        return status, None
    text = " ".join(str(error).split())
    name, colon, message = text.partition(":")
    name, message = (name, message.strip()) if colon and name.isidentifier() else ("", text)
    if status == "failed" and (name == "KeyboardInterrupt" or text == "interrupted (Ctrl-C)"):
        return "cancelled", "cancelled: interrupted by Ctrl-C (SIGINT)"
    if status == "failed" and (name == "SystemExit" or text == "the process was told to exit"):
        return "cancelled", "cancelled: the process was asked to exit (SIGTERM or SystemExit)"
    if status == "failed" and (
        name in ("EOFError", "BrokenPipeError", "ConnectionResetError") or text == "the connection to the app closed"
    ):
        return "interrupted", "interrupted: the app that started this run closed its connection to the worker"
    if name and not message:
        text = f"{name} (no message)"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return status, text or None


def pid_alive(pid: int) -> bool:
    """Whether a process with id `pid` exists on this host (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


HOST = socket.gethostname()[:255]
_writing: set[int] = set()  # ids of the runs this process is writing (its StoreWriters')


class TrajectoryStore:
    def __init__(self, url: str | None = None, data_dir: str | Path | None = None, read_only: bool = False) -> None:
        """`read_only`: open an existing database for reading only (see `open_engine`)."""
        self.url = resolve_url(url, data_dir)
        self.read_only = read_only
        self.engine = open_engine(self.url, read_only=read_only)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def schema_revision(self) -> str | None:
        """The database's Alembic revision (explorer/store/migrations/versions)."""
        with self.engine.connect() as connection:
            return migrations.current_revision(connection)

    # ---- writing -------------------------------------------------------------------------
    def create_run(
        self,
        start: RunStart,
        token_text: Callable[[int], str] = str,
        link: Callable[[Session, int], None] | None = None,
    ) -> int:
        """The run's row (status running); for a branch also its parent's steps 0..k and its edits.
        `link(session, run_id)` runs in the same transaction (a sweep links the run to its seed)."""
        with self.session() as s, s.begin():
            run = Run(
                status="running",
                model=start.model,
                strategy=start.config.strategy,
                prompt=start.prompt,
                prompt_ids=start.prompt_ids,
                config=json.loads(start.config.to_json()),
                seed=start.config.seed,
                gen_length=start.config.gen_length,
                mask_id=start.mask_id,
                device=start.device,
                owner_pid=os.getpid(),
                owner_host=HOST,
                heartbeat_at=datetime.now(UTC),
            )
            if start.origin is not None:
                run.parent_run_id, run.branch_step = start.origin.parent_run_id, start.origin.branch_step
                run.n_steps = start.origin.branch_step + 1
            s.add(run)
            s.flush()
            if start.origin is not None:
                _copy_prefix(s, start.origin, run.id, token_text)
            if link is not None:
                link(s, run.id)
        _writing.add(run.id)
        return run.id

    def add_steps(self, run_id: int, records: list[StepRecord], token_text) -> None:
        """Write a batch of steps and their commit events in one transaction."""
        if not records:
            return
        step_rows, event_rows = [], []
        for r in records:
            step_rows.append(
                {
                    "run_id": run_id,
                    "step": r.step,
                    "block": r.block,
                    "n_committed": r.n_committed,
                    "masked_before": r.masked_before,
                    "seconds": r.seconds,
                    "forward_passes": r.forward_passes,
                    "argmax": _blob(r.argmax, "<i4"),
                    "confidence": _blob(r.confidence, "<f2"),
                    "entropy": _blob(r.entropy, "<f2"),
                    "margin": _blob(r.margin, "<f2"),
                    "extras": r.extras.to_json() or None,
                }
            )
            scores = violation_scores(r)
            revised = revised_flags(r).tolist()
            for i, (pos, tok, prob) in enumerate(zip(r.committed.tolist(), r.tokens.tolist(), r.probs.tolist())):
                event_rows.append(
                    {
                        "run_id": run_id,
                        "step": r.step,
                        "position": pos,
                        "kind": "revise" if revised[i] else "commit",
                        "token_id": tok,
                        "token_text": token_text(tok),
                        "prob": _prob_in(prob),
                        "top_ids": r.top_ids[i].tolist(),
                        "top_probs": [round(p, 5) for p in r.top_probs[i].tolist()],
                        "violation_score": scores.get(pos),
                    }
                )
            for pos, tok, prob in zip(r.remasked.tolist(), r.remasked_tokens.tolist(), r.remasked_probs.tolist()):
                event_rows.append(
                    {
                        "run_id": run_id,
                        "step": r.step,
                        "position": pos,
                        "kind": "remask",
                        "token_id": tok,
                        "token_text": token_text(tok),
                        "prob": _prob_in(prob),
                        "top_ids": [],
                        "top_probs": [],
                        "violation_score": None,
                    }
                )
        with self.session() as s, s.begin():
            s.execute(insert(Step), step_rows)
            if event_rows:
                s.execute(insert(Event), event_rows)
            run = s.get(Run, run_id)
            run.n_steps, run.heartbeat_at = records[-1].step + 1, datetime.now(UTC)

    def heartbeat(self, run_id: int) -> None:
        """Record that the run's writer is alive (while the run is running)."""
        with self.session() as s, s.begin():
            s.execute(
                update(Run).where(Run.id == run_id, Run.status == "running").values(heartbeat_at=datetime.now(UTC))
            )

    def finish_run(self, run_id: int, result: DecodeResult) -> None:
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            run.status, run.error = readable_error(result.status, result.error)
            run.finished_at = datetime.now(UTC)
            run.final_text = result.text
            run.final_token_ids = result.token_ids
        _writing.discard(run_id)

    def mark_failed(self, run_id: int, error: str) -> None:
        """For a run whose writer died with it (a killed worker): keep its steps, mark failed."""
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            if run is not None and run.status == "running":
                run.status, run.error = readable_error("failed", error)
                run.finished_at = datetime.now(UTC)
        _writing.discard(run_id)

    def recover_interrupted(self, stale_after_s: float = STALE_AFTER_S) -> list[int]:
        """Mark as `interrupted` (every stored step kept) each `running` run whose writer is
        gone: on this host, its owner process has ended (or is this process, which is not
        writing it, or has not refreshed the heartbeat for `stale_after_s` seconds: its pid was
        reused); on another host, or with no owner recorded (a run of an earlier release), its
        heartbeat (else its start) is older than `stale_after_s`. The ids marked, ascending.
        For the app and the CLI to call on start."""
        now = datetime.now(UTC).replace(tzinfo=None)
        marked = []
        with self.session() as s:
            rows = s.execute(
                select(Run.id, Run.owner_pid, Run.owner_host, Run.heartbeat_at, Run.created_at)
                .where(Run.status == "running")
                .order_by(Run.id)
            ).all()
        for run_id, pid, host, heartbeat, created in rows:
            last = heartbeat or created
            age = (now - last).total_seconds() if last is not None else float("inf")
            who = f"pid {pid} on {host}" if pid is not None else "a release that did not record it"
            if pid is not None and host == HOST:
                if pid == os.getpid():
                    gone = run_id not in _writing
                else:
                    gone = not pid_alive(pid) or age > stale_after_s
                if not gone:
                    continue
                if pid == os.getpid() or not pid_alive(pid):
                    reason = f"interrupted: the process that decoded it ({who}) ended"
                else:
                    reason = f"interrupted: the process that decoded it ({who}) stopped writing it {age:.0f} s ago"
            elif age > stale_after_s:
                reason = f"interrupted: the process that decoded it ({who}) ended (no heartbeat for {age:.0f} s)"
            else:
                continue
            with self.session() as s, s.begin():
                done = s.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == "running")
                    .values(status="interrupted", error=reason, finished_at=datetime.now(UTC))
                )
                if done.rowcount:
                    marked.append(run_id)
        return marked

    def delete_run(self, run_id: int) -> bool:
        with self.session() as s, s.begin():
            s.execute(delete(Event).where(Event.run_id == run_id))
            s.execute(delete(Step).where(Step.run_id == run_id))
            s.execute(delete(RunNote).where(RunNote.run_id == run_id))
            return s.execute(delete(Run).where(Run.id == run_id)).rowcount > 0

    # ---- reading -------------------------------------------------------------------------
    def list_runs(
        self,
        limit: int = 50,
        status: str | None = None,
        model: str | None = None,
        strategy: str | None = None,
        since: str | None = None,
        text: str | None = None,
        tag: str | None = None,
    ) -> list[dict]:
        """Newest first, filtered; `since` is an ISO date (YYYY-MM-DD), `text` searches prompt and text,
        `tag` keeps the runs with that tag (case-insensitive, the whole tag; "a, b": both)."""
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        for column, value in ((Run.status, status), (Run.model, model), (Run.strategy, strategy)):
            if value:
                query = query.where(column == value)
        if since:
            try:
                start = datetime.fromisoformat(since)
            except ValueError:
                raise ValueError(f"'since' must be a date like 2026-11-27, got {since!r}") from None
            query = query.where(Run.created_at >= start)  # naive: UTC; aware: converted to UTC
        if text:
            pattern = f"%{text}%"
            query = query.where(Run.prompt.ilike(pattern) | Run.final_text.ilike(pattern))
        for wanted in parse_tags(tag):  # "a, b": runs with both tags
            tagged = select(RunNote.run_id).where(RunNote.tags.ilike(f"%,{_like_escaped(wanted)},%", escape="\\"))
            query = query.where(Run.id.in_(tagged))
        with self.session() as s:
            return [_run_dict(r) for r in s.scalars(query)]

    # ---- tags, notes and presets (the run_notes table) -----------------------------------------
    def get_notes(self, run_id: int) -> dict:
        """{"tags": [...], "note": str, "preset": str | None, "updated_at"}; empty ones for a run without."""
        with self.session() as s:
            return _notes_dict(s.get(RunNote, run_id))

    def notes_for(self, run_ids: list[int]) -> dict[int, dict]:
        """`get_notes` of several runs at once (runs without notes are left out)."""
        if not run_ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(RunNote).where(RunNote.run_id.in_(list(run_ids))))
            return {row.run_id: _notes_dict(row) for row in rows}

    def set_notes(self, run_id: int, tags: str | list[str] | None, note: str | None) -> dict:
        """Replace a run's tags (see `parse_tags`) and note; the stored result. KeyError for an
        unknown run, ValueError for tags or a note over the limits."""
        clean = parse_tags(tags)
        note = (note or "").strip()
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"the note is {len(note)} characters; at most {MAX_NOTE_CHARS}")
        return self._update_notes(run_id, tags=_tags_column(clean), note=note)

    def set_run_preset(self, run_id: int, preset: str | None) -> None:
        """Record the teaching preset that started a run (None: nothing is recorded)."""
        if preset:
            self._update_notes(run_id, preset=preset[:200])

    def _update_notes(self, run_id: int, **values) -> dict:
        with self.session() as s, s.begin():
            if s.get(Run, run_id) is None:
                raise KeyError(f"no run with id {run_id}")
            row = s.get(RunNote, run_id)
            if row is None:
                row = RunNote(run_id=run_id, tags="", note="")
                s.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = datetime.now(UTC)
            s.flush()
            return _notes_dict(row)

    def token_texts(self, run_id: int) -> dict[int, str]:
        """token id -> text of every token a run committed (for runs of models not loaded here)."""
        with self.session() as s:
            rows = s.execute(select(Event.token_id, Event.token_text).where(Event.run_id == run_id).distinct())
            return {token_id: text for token_id, text in rows}

    def get_run(self, run_id: int) -> dict | None:
        with self.session() as s:
            run = s.get(Run, run_id)
            return _run_dict(run) if run else None

    def step_summaries(self, run_id: int) -> list[dict]:
        """Per step: block, committed positions (revisions included, flagged in `revised`)
        with their tokens and probabilities."""
        with self.session() as s:
            steps = s.execute(
                select(Step.step, Step.block, Step.n_committed, Step.seconds)
                .where(Step.run_id == run_id)
                .order_by(Step.step)
            ).all()
            events = s.execute(
                select(Event.step, Event.position, Event.token_id, Event.token_text, Event.prob, Event.kind)
                .where(Event.run_id == run_id, Event.kind.in_(COMMIT_EVENTS))
                .order_by(Event.step, Event.position)
            ).all()
        by_step: dict[int, list] = {}
        for e in events:
            by_step.setdefault(e.step, []).append(e)
        return [
            {
                "step": st.step,
                "block": st.block,
                "seconds": st.seconds,
                "committed": [e.position for e in by_step.get(st.step, [])],
                "tokens": [e.token_id for e in by_step.get(st.step, [])],
                "token_texts": [e.token_text for e in by_step.get(st.step, [])],
                "probs": [_prob_out(e.prob) for e in by_step.get(st.step, [])],
                "revised": [e.kind == "revise" for e in by_step.get(st.step, [])],
            }
            for st in steps
        ]

    def read_arrays(self, run_id: int) -> RunArrays:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run with id {run_id}")
            rows = s.execute(
                select(
                    Step.step,
                    Step.block,
                    Step.n_committed,
                    Step.argmax,
                    Step.confidence,
                    Step.entropy,
                    Step.margin,
                    Step.extras,
                )
                .where(Step.run_id == run_id)
                .order_by(Step.step)
            ).all()
            commits = s.execute(
                select(
                    Event.step,
                    Event.position,
                    Event.token_id,
                    Event.prob,
                    Event.top_ids,
                    Event.top_probs,
                    Event.kind == "revise",
                )
                .where(Event.run_id == run_id, Event.kind.in_(COMMIT_EVENTS))
                .order_by(Event.id)
            ).all()
            remasks = s.execute(
                select(Event.step, Event.position, Event.token_id)
                .where(Event.run_id == run_id, Event.kind == "remask")
                .order_by(Event.id)
            ).all()
            edits = s.execute(
                select(Event.step, Event.position, Event.token_id, Event.kind == "force")
                .where(Event.run_id == run_id, Event.kind.in_(tuple(EDIT_EVENTS.values())))
                .order_by(Event.id)
            ).all()
            info = _run_dict(run)
        G, S = info["gen_length"], len(rows)

        def stack(index: int, dtype: str) -> np.ndarray:
            if not rows:
                return np.zeros((G, 0), dtype=np.float32 if dtype != "<i4" else np.int32)
            joined = np.frombuffer(b"".join(r[index] for r in rows), dtype=dtype).reshape(S, G)
            return np.ascontiguousarray(joined.T.astype(np.int32 if dtype == "<i4" else np.float32))

        return assemble(
            info,
            steps=np.array([r[0] for r in rows], dtype=np.int64),
            blocks=np.array([r[1] for r in rows], dtype=np.int64),
            n_committed=np.array([r[2] for r in rows], dtype=np.int64),
            argmax=stack(3, "<i4"),
            confidence=stack(4, "<f2"),
            entropy=stack(5, "<f2"),
            margin=stack(6, "<f2"),
            commits=_commits(commits),
            extras=[StepExtras.lenient(r[7]) for r in rows],
            remasks=Remasks.of([(r[0], r[1], r[2]) for r in remasks]),
            edits=Edits.of([tuple(r) for r in edits]),
        )

    def forward_passes(self, run_id: int, after_step: int = -1) -> int:
        """The sequence forwards a run's steps after `after_step` ran (all of them by default)."""
        with self.session() as s:
            total = s.scalar(
                select(func.coalesce(func.sum(Step.forward_passes), 0)).where(
                    Step.run_id == run_id, Step.step > after_step
                )
            )
        return int(total)

    def count_runs(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count(Run.id)))


def _copy_prefix(s: Session, origin: Origin, run_id: int, token_text: Callable[[int], str]) -> None:
    """A branch holds its parent's steps 0..k (and their events), then its edits as events at
    step k: every view reads it as a whole run, and it outlives a deleted parent."""
    parent, k = origin.parent_run_id, origin.branch_step
    step_columns = [c.name for c in Step.__table__.columns if c.name != "run_id"]
    s.execute(
        insert(Step).from_select(
            ["run_id", *step_columns],
            select(literal(run_id), *(getattr(Step, c) for c in step_columns)).where(
                Step.run_id == parent, Step.step <= k
            ),
        )
    )
    event_columns = [c.name for c in Event.__table__.columns if c.name not in ("id", "run_id")]
    s.execute(
        insert(Event).from_select(
            ["run_id", *event_columns],
            select(literal(run_id), *(getattr(Event, c) for c in event_columns))
            .where(Event.run_id == parent, Event.step <= k)
            .order_by(Event.id),
        )
    )
    for edit in origin.edits:
        s.add(
            Event(
                run_id=run_id,
                step=k,
                position=edit.position,
                kind=edit.event_kind,
                token_id=edit.token_id,
                token_text=token_text(edit.token_id),
                prob=_prob_in(edit.prob),
                top_ids=[],
                top_probs=[],
                violation_score=None,
            )
        )


def _prob_in(prob: float | None) -> float | None:
    """An event's probability as stored: NaN (unknown) as NULL on every backend (SQLite would
    make it NULL anyway; PostgreSQL would keep a NaN that JSON bundles cannot carry)."""
    return None if prob is None or prob != prob else float(prob)


def _prob_out(prob: float | None) -> float:
    """A stored event probability as read: NULL (unknown) is NaN."""
    return float("nan") if prob is None else float(prob)


def _commits(rows) -> Commits:
    """Commit and revision event rows (step, position, token_id, prob, top_ids, top_probs, is_revision)."""
    if not rows:
        return Commits.empty()
    n = len(rows)
    # Rows may hold fewer or more than K alternatives: pad/cut each to K before stacking.
    top_ids = np.stack([fit_top([r[4]], -1, np.int32, 1)[0] for r in rows])  # (n, K)
    top_probs = np.stack([fit_top([r[5]], np.nan, np.float32, 1)[0] for r in rows])  # (n, K)
    return Commits(
        step=np.fromiter((r[0] for r in rows), np.int64, n),
        position=np.fromiter((r[1] for r in rows), np.int64, n),
        token=np.fromiter((r[2] for r in rows), np.int64, n),
        prob=np.fromiter((_prob_out(r[3]) for r in rows), np.float32, n),
        top_ids=top_ids,
        top_probs=top_probs,
        revised=np.fromiter((bool(r[6]) for r in rows), bool, n),
    )


def _run_dict(run: Run) -> dict:
    return {c.name: getattr(run, c.name) for c in Run.__table__.columns}


class StoreWriter(Callback):
    """Engine callback: the run row at start, steps in batches, the final status at the end.

    Steps are flushed every `batch_steps` steps or `max_delay` seconds, whichever first, so a
    killed process loses at most that much and the database stays consistent. Each flush
    refreshes the run's heartbeat, and a daemon thread refreshes it every `heartbeat_s` seconds
    while the run is open (a step that takes minutes must not look abandoned).
    """

    def __init__(
        self,
        store: TrajectoryStore,
        token_text,
        batch_steps: int = 16,
        max_delay: float = 0.5,
        heartbeat_s: float = HEARTBEAT_S,
        link: Callable[[Session, int], None] | None = None,
    ) -> None:
        self.store = store
        self.link = link  # run with the run row's insert, in its transaction (see create_run)
        self.token_text = token_text
        self.batch_steps = batch_steps
        self.max_delay = max_delay
        self.heartbeat_s = heartbeat_s
        self.run_id: int | None = None
        self._pending: list[StepRecord] = []
        self._last_flush = time.monotonic()
        self._stop_beating = threading.Event()

    def on_start(self, start: RunStart) -> None:
        self.run_id = self.store.create_run(start, self.token_text, self.link)
        self._last_flush = time.monotonic()
        beat = threading.Thread(target=self._beat, args=(self.run_id,), name="run-heartbeat", daemon=True)
        beat.start()

    def _beat(self, run_id: int) -> None:
        while not self._stop_beating.wait(self.heartbeat_s):
            try:
                self.store.heartbeat(run_id)
            except SQLAlchemyError:
                pass  # a busy or briefly unreachable database: the next beat or flush retries

    def on_step(self, record: StepRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= self.batch_steps or time.monotonic() - self._last_flush > self.max_delay:
            self.flush()

    def flush(self) -> None:
        self.store.add_steps(self.run_id, self._pending, self.token_text)
        self._pending = []
        self._last_flush = time.monotonic()

    def on_end(self, result: DecodeResult) -> None:
        if self.run_id is None:
            return
        self._stop_beating.set()
        self.flush()
        self.store.finish_run(self.run_id, result)
