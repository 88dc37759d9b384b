"""Unknown probabilities: `events.prob` may be NULL, for a commit whose probability the recording
does not know (a run recorded from a user's own generate(), explorer/recording/: no logits).
The store writes NaN as NULL and reads NULL back as NaN; rows written before keep their values.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:  # SQLite rebuilds the table, rows and ids kept
        batch.alter_column("prob", existing_type=sa.Float, nullable=True)


def downgrade() -> None:
    op.execute("UPDATE events SET prob = 0 WHERE prob IS NULL")  # the old placeholder of an unknown p
    with op.batch_alter_table("events") as batch:
        batch.alter_column("prob", existing_type=sa.Float, nullable=False)
