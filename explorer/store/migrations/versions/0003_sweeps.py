"""Sweeps: `sweeps`, `sweep_cells` and `sweep_runs` (one row per (cell, seed), unique), linking
each run of a sweep (`python -m explorer sweep`) to its sweep and cell.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from explorer.store.database import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sweeps_name", "sweeps", ["name"])
    op.create_table(
        "sweep_cells",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("cell", sa.JSON, nullable=False),
        sa.UniqueConstraint("sweep_id", "key", name="uq_sweep_cells_key"),
    )
    op.create_index("ix_sweep_cells_sweep_id", "sweep_cells", ["sweep_id"])
    op.create_table(
        "sweep_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sweep_id", sa.Integer, sa.ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("sweep_cells.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("metrics", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("cell_id", "seed", name="uq_sweep_runs_cell_seed"),
    )
    op.create_index("ix_sweep_runs_sweep_id", "sweep_runs", ["sweep_id"])


def downgrade() -> None:
    op.drop_table("sweep_runs")
    op.drop_table("sweep_cells")
    op.drop_table("sweeps")
