"""Alembic's environment: always online, on the connection `explorer.store.migrations.upgrade`
passes in (inside its transaction), with batch mode so SQLite can rebuild tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from explorer.store import sweeps  # noqa: F401  (its tables are part of the metadata)
from explorer.store.database import Base

connection = context.config.attributes.get("connection")
if connection is None:  # the `alembic` command line, with sqlalchemy.url set in its ini
    connection = create_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
