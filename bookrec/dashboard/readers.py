"""A reader's page data: their cached list (`recs:{user}`: books with covers and scores, the version that computed it
and how fresh it is), their ratings from the ratings store with the books' titles and covers, their delta (the
ratings since production's snapshot) and whether a fresh recompute is pending for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bookrec.dashboard.sources import Sources
from bookrec.ratings.store import ReaderRatings
from bookrec.shared import delta, payloads
from bookrec.shared.entries import ratings_through
from bookrec.shared.errors import BookrecError, MalformedEntry
from bookrec.shared.ratings import stream_id_key
from bookrec.shared.redis_conn import text

RATINGS_SHOWN = 100
"""A reader's page lists at most this many of their ratings, the newest first (and says how many they have)."""


@dataclass(frozen=True)
class ReaderView:
    """One reader as their page shows them. `entry` is their cached list (None without one, or when the key holds
    something else, said by `entry_error`); `ratings` their ratings in the store (None when it cannot be read, said
    by `ratings_error`); `pending_since_ms` when they started waiting for a fresh recompute (None: not waiting)."""

    user: str
    entry: dict[str, Any] | None
    entry_error: str | None
    production: str | None
    delta: delta.ReaderDelta
    pending_since_ms: float | None
    ratings: ReaderRatings | None
    ratings_error: str | None

    @property
    def known(self) -> bool:
        """Whether the deployment holds anything about this reader: a cached list, a rating or a delta."""
        has_ratings = self.ratings is not None and self.ratings.total > 0
        return self.entry is not None or self.entry_error is not None or has_ratings or self.delta.seq > 0

    @property
    def current(self) -> bool:
        """Whether the cached list was computed by the production version."""
        return self.entry is not None and self.entry["model_version"] == self.production

    @property
    def behind(self) -> bool:
        """Whether the ingest has committed a rating event of the reader that the cached list does not include yet
        (its `ratings_through` is older than the delta's newest stream id): a fresh recompute is due."""
        if self.entry is None or self.delta.through is None:
            return False
        listed = ratings_through(self.entry)
        return listed is None or listed < stream_id_key(self.delta.through)


def reader_view(sources: Sources, user: object) -> ReaderView:
    """The page of reader `user` (ValidationError if it is not a user id); the ratings store's problems are kept in
    `ratings_error`, a malformed cache entry in `entry_error`. RedisUnavailable if Redis does not answer."""
    user_id = payloads.user_id(user)
    client = sources.client
    try:
        cached = client.get(user_id)
        entry, entry_error = (cached.entry if cached else None), None
    except MalformedEntry as exc:
        entry, entry_error = None, str(exc)
    with client.redis.pipeline(transaction=False) as pipe:
        pipe.get(client.keys.model_current)
        pipe.zscore(client.keys.fresh_pending, user_id)
        production, pending = pipe.execute()
    (reader_delta,) = delta.read(client.redis, client.keys, [user_id])
    try:
        ratings, ratings_error = sources.ratings().reader_ratings(user_id, RATINGS_SHOWN), None
    except BookrecError as exc:
        ratings, ratings_error = None, str(exc)
    return ReaderView(user_id, entry, entry_error, text(production), reader_delta, pending, ratings, ratings_error)
