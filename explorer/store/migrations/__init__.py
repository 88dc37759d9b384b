"""Schema migrations of the trajectory store (Alembic), applied by `open_engine` on every
writable open: `upgrade(engine)` brings any database to the newest revision in one transaction.

Revisions live in versions/: `0001` is the schema of every release before migrations existed
(runs, steps, events, run_notes), `0002` records a running run's owner (process id, host name,
heartbeat) and makes SQLite run ids never reused (AUTOINCREMENT), `0003` adds the sweep tables
(explorer/store/sweeps.py), `0004` lets `events.prob` be NULL (an unknown probability). A database written before
migrations (tables, no `alembic_version`) goes through `0001` too: it creates only the tables
that database lacks (a release before run_notes had none), so old and new databases take one
path. A new revision: add versions/NNNN_<what>.py with `down_revision` the previous head, and
a test in tests/test_migrations.py.

Upgrade a database by hand (for one opened read-only, e.g. on a read-only medium copied back):

    python -m explorer.store.migrations [--db URL] [--data-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
UPGRADE_COMMAND = "python -m explorer.store.migrations --db URL"
_PG_LOCK_KEY = 0x64_6C_6D_65  # pg_advisory_xact_lock key: one migration at a time per server


def config() -> Config:
    """An Alembic Config built in code (no alembic.ini): the script directory is this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The database's revision; None for one without `alembic_version` (new, or pre-migrations)."""
    return MigrationContext.configure(connection).get_current_revision()


def needs_upgrade(engine: Engine) -> str | None:
    """Why `engine`'s database is not at the newest revision (one line), or None if it is."""
    with engine.connect() as connection:
        revision = current_revision(connection)
        if revision == head():
            return None
        if revision is None:
            if inspect(connection).has_table("runs"):
                return "it was written by a release before schema migrations"
            return "it holds no tables yet"
        if revision not in known_revisions():
            return f"its schema revision {revision} is newer than this program's ({head()})"
        return f"its schema is at revision {revision}, this program's is {head()}"


def upgrade(engine: Engine) -> None:
    """Bring the database of `engine` to the newest revision, in one transaction, with
    concurrent openers (the app and its workers) serialized: SQLite by BEGIN IMMEDIATE (and
    foreign keys off while a table is rebuilt, so no ON DELETE cascade fires), PostgreSQL by an
    advisory lock. Raises alembic's or SQLAlchemy's errors; `open_engine` words them."""
    if needs_upgrade(engine) is None:
        return
    sqlite = engine.dialect.name == "sqlite"
    target = _sqlite_migration_engine(engine) if sqlite else engine
    try:
        with target.connect() as connection, connection.begin():
            if not sqlite:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            cfg = config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")  # reads the revision inside the lock: a second opener does nothing
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration left {len(broken)} rows with dangling foreign keys")
    finally:
        if sqlite:
            target.dispose()


def _sqlite_migration_engine(engine: Engine) -> Engine:
    """A one-connection engine on the same SQLite file whose transactions are BEGIN IMMEDIATE
    (pysqlite would run DDL outside any transaction) with foreign keys off (a PRAGMA that only
    takes effect outside a transaction, hence on connect)."""
    migration_engine = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(migration_engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(migration_engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return migration_engine
