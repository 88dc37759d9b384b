"""A running run's owner (process id, host name, heartbeat) for startup recovery, and run ids
that are never reused on SQLite (AUTOINCREMENT: the runs table is rebuilt, rows and ids kept;
PostgreSQL's SERIAL sequence never reused one).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from explorer.store.database import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    kwargs = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}
    with op.batch_alter_table("runs", **kwargs) as batch:
        batch.add_column(sa.Column("owner_pid", sa.Integer, nullable=True))
        batch.add_column(sa.Column("owner_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", UTCDateTime, nullable=True))
    if sqlite:  # AUTOINCREMENT counts from the highest id ever used: at least the highest kept
        op.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'runs', COALESCE(MAX(id), 0) FROM runs "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'runs')"
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("owner_host")
        batch.drop_column("owner_pid")
