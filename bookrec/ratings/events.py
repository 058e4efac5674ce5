"""A rating event as the ratings store applies it.

To be unified with shared/ratings.py at merge (the stream contract and event validation live there).
"""

from __future__ import annotations

from dataclasses import dataclass

RATE, DELETE = "rate", "delete"


@dataclass(frozen=True)
class RatingEvent:
    """One reader's rating of one book at `ts` (epoch seconds); `op` "delete" removes it (rating None)."""

    user_id: str
    book_id: str
    rating: float | None
    ts: float
    op: str = RATE
    event_id: str | None = None
    stream_id: str | None = None
