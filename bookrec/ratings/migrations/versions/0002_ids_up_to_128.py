"""Ids up to 128 characters, as the ratings stream's contract allows (0001 kept 64, so a valid event with a
65-128 character id went to the dead stream).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID_COLUMNS = {
    "ratings": ("user_id", "book_id"),
    "books": ("book_id",),
    "applied_events": ("id",),
    "stream_state": ("stream", "last_stream_id"),
}


def upgrade() -> None:
    """Widen every id column to 128 characters (PostgreSQL: ALTER COLUMN TYPE; SQLite: the table is rebuilt)."""
    _set_length(128, 64)


def downgrade() -> None:
    """Back to 64 characters (fails on PostgreSQL if a longer id is stored)."""
    _set_length(64, 128)


def _set_length(new: int, old: int) -> None:
    for table, columns in ID_COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.String(new), existing_type=sa.String(old))
