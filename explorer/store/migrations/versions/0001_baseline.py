"""Baseline: the schema of every release before migrations (runs, steps, events, run_notes).

Creates only the tables a database lacks, so it also brings a database written before
migrations to the baseline (a release before run_notes existed gets that table, its other tables
and rows are left as they are). Written out column by column, not from the ORM models, which
follow the newest revision.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from explorer.store.database import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> dict[str, tuple]:
    return {
        "runs": (
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("finished_at", UTCDateTime, nullable=True),
            sa.Column("status", sa.String(16), nullable=False, index=True),
            sa.Column("model", sa.String(200), nullable=False, index=True),
            sa.Column("strategy", sa.String(64), nullable=False, index=True),
            sa.Column("prompt", sa.Text, nullable=False),
            sa.Column("prompt_ids", sa.JSON, nullable=False),
            sa.Column("config", sa.JSON, nullable=False),
            sa.Column("seed", sa.BigInteger, nullable=False),
            sa.Column("gen_length", sa.Integer, nullable=False),
            sa.Column("mask_id", sa.Integer, nullable=False),
            sa.Column("device", sa.String(64), nullable=False),
            sa.Column("n_steps", sa.Integer, nullable=False),
            sa.Column("final_text", sa.Text, nullable=True),
            sa.Column("final_token_ids", sa.JSON, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("parent_run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
            sa.Column("branch_step", sa.Integer, nullable=True),
        ),
        "steps": (
            sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("step", sa.Integer, primary_key=True),
            sa.Column("block", sa.Integer, nullable=False),
            sa.Column("n_committed", sa.Integer, nullable=False),
            sa.Column("masked_before", sa.Integer, nullable=False),
            sa.Column("seconds", sa.Float, nullable=False),
            sa.Column("forward_passes", sa.Integer, nullable=False),
            sa.Column("argmax", sa.LargeBinary, nullable=False),
            sa.Column("confidence", sa.LargeBinary, nullable=False),
            sa.Column("entropy", sa.LargeBinary, nullable=False),
            sa.Column("margin", sa.LargeBinary, nullable=False),
            sa.Column("extras", sa.JSON, nullable=True),
        ),
        "events": (
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("step", sa.Integer, nullable=False),
            sa.Column("position", sa.Integer, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("token_id", sa.Integer, nullable=False),
            sa.Column("token_text", sa.String(200), nullable=False),
            sa.Column("prob", sa.Float, nullable=False),
            sa.Column("top_ids", sa.JSON, nullable=False),
            sa.Column("top_probs", sa.JSON, nullable=False),
            sa.Column("violation_score", sa.Float, nullable=True),
            sa.Index("ix_events_run_step", "run_id", "step"),
            sa.Index("ix_events_token", "token_text"),
        ),
        "run_notes": (
            sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("tags", sa.Text, nullable=False),
            sa.Column("note", sa.Text, nullable=False),
            sa.Column("preset", sa.String(200), nullable=True),
            sa.Column("updated_at", UTCDateTime, nullable=False),
        ),
    }


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, items in _tables().items():  # in dependency order: runs first
        if name not in existing:
            op.create_table(name, *items)


def downgrade() -> None:
    for name in ("run_notes", "events", "steps", "runs"):
        op.drop_table(name)
