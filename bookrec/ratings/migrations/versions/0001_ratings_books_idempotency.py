"""The first schema: ratings (with tombstones), the book catalogue, applied ids and the stream position.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)


def upgrade() -> None:
    """Create ratings, books, applied_events and stream_state."""
    op.create_table(
        "ratings",
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("book_id", ID, primary_key=True),
        sa.Column("rating", sa.Double, nullable=True, comment="NULL: deleted (a tombstone keeping its ts)"),
        sa.Column("ts", sa.Double, nullable=False, comment="the event's time, epoch seconds; the latest ts wins"),
        sa.Column("updated_at", sa.Double, nullable=False, comment="when the store last wrote the row, epoch seconds"),
    )
    op.create_index("ix_ratings_updated_at", "ratings", ["updated_at"])
    op.create_table(
        "books",
        sa.Column("book_id", ID, primary_key=True),
        sa.Column("goodreads_book_id", sa.BigInteger),
        sa.Column("best_book_id", sa.BigInteger),
        sa.Column("work_id", sa.BigInteger),
        sa.Column("books_count", sa.Integer),
        sa.Column("isbn", sa.String(32)),
        sa.Column("isbn13", sa.String(32)),
        sa.Column("authors", sa.Text),
        sa.Column("original_publication_year", sa.Integer),
        sa.Column("original_title", sa.Text),
        sa.Column("title", sa.Text),
        sa.Column("language_code", sa.String(16)),
        sa.Column("average_rating", sa.Double),
        sa.Column("ratings_count", sa.BigInteger),
        sa.Column("work_ratings_count", sa.BigInteger),
        sa.Column("work_text_reviews_count", sa.BigInteger),
        *(sa.Column(f"ratings_{stars}", sa.BigInteger) for stars in range(1, 6)),
        sa.Column("image_url", sa.Text),
        sa.Column("small_image_url", sa.Text),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "applied_events",
        sa.Column("kind", sa.String(8), primary_key=True, comment="'event' (an event_id) or 'stream' (a stream id)"),
        sa.Column("id", ID, primary_key=True),
        sa.Column("applied_at", sa.Double, nullable=False),
    )
    op.create_index("ix_applied_events_applied_at", "applied_events", ["applied_at"])
    op.create_table(
        "stream_state",
        sa.Column("stream", ID, primary_key=True),
        sa.Column("last_stream_id", ID, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    """Drop every table of this revision."""
    for table in ("stream_state", "applied_events", "books", "ratings"):
        op.drop_table(table)
