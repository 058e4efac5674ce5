"""The ratings store's tables (SQLAlchemy 2 Core), one schema for SQLite and PostgreSQL.

A public contract, documented in the README's "Ratings store" section; every change here needs
an Alembic revision in migrations/versions/ (tests/unit/test_ratings_store.py checks they agree).
"""

from __future__ import annotations

import sqlalchemy as sa

ID_LENGTH = 128
"""Longest user, book, event or stream id the store keeps."""

metadata = sa.MetaData()

ratings = sa.Table(
    "ratings",
    metadata,
    sa.Column("user_id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("book_id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("rating", sa.Double, nullable=True, comment="NULL: deleted (a tombstone keeping its ts)"),
    sa.Column("ts", sa.Double, nullable=False, comment="the event's time, epoch seconds; the latest ts wins"),
    sa.Column("updated_at", sa.Double, nullable=False, comment="when the store last wrote the row, epoch seconds"),
    sa.Index("ix_ratings_updated_at", "updated_at"),
)

books = sa.Table(
    "books",
    metadata,
    sa.Column("book_id", sa.String(ID_LENGTH), primary_key=True),
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
    sa.Column("ratings_1", sa.BigInteger),
    sa.Column("ratings_2", sa.BigInteger),
    sa.Column("ratings_3", sa.BigInteger),
    sa.Column("ratings_4", sa.BigInteger),
    sa.Column("ratings_5", sa.BigInteger),
    sa.Column("image_url", sa.Text),
    sa.Column("small_image_url", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
)

BOOK_COLUMNS = tuple(c.name for c in books.columns if c.name != "updated_at")
"""The columns of a goodbooks books.csv the catalogue keeps."""

applied_events = sa.Table(
    "applied_events",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True, comment="'event' (an event_id) or 'stream' (a stream id)"),
    sa.Column("id", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("applied_at", sa.Double, nullable=False),
    sa.Index("ix_applied_events_applied_at", "applied_at"),
)

stream_state = sa.Table(
    "stream_state",
    metadata,
    sa.Column("stream", sa.String(ID_LENGTH), primary_key=True),
    sa.Column("last_stream_id", sa.String(ID_LENGTH), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

RATINGS_STREAM = "ratings"
"""The stream_state row of the ratings stream."""
