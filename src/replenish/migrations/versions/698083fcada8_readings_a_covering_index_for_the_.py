"""readings: a covering index for the evaluator's window

Revision ID: 698083fcada8
Revises: 1dfff895b7ac
Create Date: 2026-12-06 17:00:42.910372

Replaces ix_readings_slot_ts (slot_id, ts) with (slot_id, ts, id, level): the evaluator's read of a slot's
readings is served by the index alone. Index operations only: the table is not copied. Building it reads the whole
table once (on PostgreSQL under a lock that blocks writes to readings meanwhile: run it in a quiet moment).
"""

from __future__ import annotations

from alembic import op

revision = "698083fcada8"
down_revision = "1dfff895b7ac"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_readings_slot_window", "readings", ["slot_id", "ts", "id", "level"], unique=False)
    op.drop_index("ix_readings_slot_ts", table_name="readings")


def downgrade() -> None:
    op.create_index("ix_readings_slot_ts", "readings", ["slot_id", "ts"], unique=False)
    op.drop_index("ix_readings_slot_window", table_name="readings")
