"""Fresh lists, the ingest's side: keep each reader's delta in Redis and ask the workers to recompute their lists.

Right after a batch commits, `queue_after_commit` puts into the MULTI that acknowledges it: the store's rows of the
batch's (reader, book) pairs into their deltas (shared/delta.py), each reader's newest stream id, and the batch's
readers into the pending set (shared/pending.py); after it, `wake_if_asked` enqueues a fresh job if none is queued.
`Deltas.rebuild` writes them again from the ratings store (the source of truth) when Redis came back empty;
`Deltas.upkeep_if_due` wakes a fresh job for readers left pending without one and drops what a newer production
version covers, once every serving worker serves it (README: Fresh lists).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import Iterable, Iterator

import redis

from bookrec.model_store.store import ModelStore
from bookrec.ratings.store import RatingsStore
from bookrec.shared import delta, pending, worker_state
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import RatingEvent, StoredRating, stream_id_key
from bookrec.shared.redis_conn import text
from bookrec.shared.settings import Settings

log = logging.getLogger(__name__)

PRUNE_MARGIN_S = 60.0
"""A version is taken to cover only the rows the store wrote this many seconds before its snapshot's newest
`updated_at`: a batch whose transaction began before the snapshot but committed after it may carry an older
`updated_at` (its clock was read first; SQLite waits up to 30 s for the write lock), and must not be pruned."""
UPKEEP_S = 5.0
"""How often an ingest looks whether readers are pending with no fresh job queued, and whether production has moved
to a version the deltas were not pruned for."""
SCAN_BATCH = 500
"""Delta keys per prune script call (and readers per rebuild write)."""


def throughs(events: Iterable[RatingEvent]) -> dict[str, str]:
    """Each reader's newest stream id among `events`."""
    newest: dict[str, str] = {}
    for event in events:
        if event.stream_id is None:
            continue
        current = newest.get(event.user_id)
        if current is None or stream_id_key(event.stream_id) > stream_id_key(current):
            newest[event.user_id] = event.stream_id
    return newest


def queue_after_commit(
    pipe: redis.client.Pipeline, keys: Keys, rows: Iterable[StoredRating], newest: dict[str, str]
) -> int | None:
    """Queue on `pipe` (the MULTI acknowledging a batch) the rows into their readers' deltas, each reader's newest
    stream id, and those readers into the pending set (shared/pending.py). Returns the position among the pipeline's
    replies of the one saying whether a fresh job must be woken (`wake_if_asked`), None if no reader."""
    rows = list(rows)
    delta.write(pipe, keys, rows, newest)
    readers = sorted(set(newest) | {row.user_id for row in rows})
    if not readers:
        return None
    position = len(pipe)
    pending.add(pipe, keys, readers)
    return position


def wake_if_asked(client: redis.Redis, keys: Keys, settings: Settings, replies: list, position: int | None) -> None:
    """After the MULTI ran: enqueue a fresh job if `queue_after_commit`'s pending-set reply asked for one."""
    if position is not None and replies[position]:
        pending.wake(client, keys, settings)


def covered_until(metadata: dict) -> float | None:
    """Until when (epoch seconds of the store's `updated_at`) a version's training data covers the store: its
    snapshot's newest `updated_at`, or for a version trained from a file (no snapshot) its creation time; None if
    it covers nothing (a snapshot of an empty store)."""
    snapshot = metadata.get("snapshot")
    if isinstance(snapshot, dict):
        newest = snapshot.get("newest_updated_at")
        return None if newest is None else float(newest)
    created = metadata.get("created_at")
    return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else None


class Deltas:
    """An ingest's upkeep of the deltas: rebuilding them from the store, pruning what production covers."""

    def __init__(self, client: redis.Redis, ratings: RatingsStore, settings: Settings) -> None:
        self.client, self.ratings, self.settings = client, ratings, settings
        self.keys = Keys(settings.key_prefix)
        self.models = ModelStore(settings.model_store)
        self._next_check = 0.0

    def cutoff(self, version: str) -> float:
        """The `updated_at` at or before which `version` covers a store row (-inf: it covers none)."""
        covered = covered_until(self.models.metadata(version))
        return -math.inf if covered is None else covered - PRUNE_MARGIN_S

    def rebuild(self) -> int:
        """Write every store row production does not cover into the deltas, the store's newest stream id as each
        rebuilt reader's *through (the store keeps no stream id per row), and fresh jobs for those readers.
        Returns how many rows; nothing (with a warning) when nothing is in production or its metadata is unreadable."""
        version = text(self.client.get(self.keys.model_current)) or self.models.production()
        if version is None:
            log.warning("no model in production: the deltas are not rebuilt (nothing serves them)")
            return 0
        started = time.monotonic()
        try:
            cutoff = self.cutoff(version)
        except BookrecError as exc:
            log.warning("the deltas are not rebuilt: %s", exc)
            return 0
        rows, last = self.ratings.rows_since(cutoff)
        by_user: dict[str, list[StoredRating]] = {}
        for row in rows:
            by_user.setdefault(row.user_id, []).append(row)
        users = sorted(by_user)
        for start in range(0, len(users), SCAN_BATCH):
            chunk = users[start : start + SCAN_BATCH]
            pipe = self.client.pipeline(transaction=True)
            newest = {user: last for user in chunk} if last else {}
            position = queue_after_commit(pipe, self.keys, [r for u in chunk for r in by_user[u]], newest)
            wake_if_asked(self.client, self.keys, self.settings, pipe.execute(), position)
        log.info(
            "rebuilt the deltas of %d readers (%d rows the store wrote after %s's snapshot) in %.2f s",
            len(users),
            len(rows),
            version,
            time.monotonic() - started,
        )
        return len(rows)

    def upkeep_if_due(self) -> tuple[int, int] | None:
        """At most every UPKEEP_S: wake a fresh job if readers are pending and none is queued (`pending.ensure_job`);
        then, if production names a version the deltas were not pruned for and every serving worker serves it,
        prune them to it (`prune`). Returns what `prune` did, or None."""
        if time.monotonic() < self._next_check:
            return None
        self._next_check = time.monotonic() + UPKEEP_S
        if pending.ensure_job(self.client, self.keys, self.settings):
            log.warning("readers were waiting for a fresh recompute with no fresh job queued; enqueued one")
        current, pruned = (text(v) for v in self.client.mget([self.keys.model_current, self.keys.delta_pruned]))
        if current is None or current == pruned:
            return None
        serving = [s["version"] for s in worker_state.read_all(self.client, self.keys) if s.get("version")]
        if any(version != current for version in serving):
            return None  # a worker still serves an older version, whose lists need the rows the new one covers
        try:
            cutoff = self.cutoff(current)
        except BookrecError as exc:
            log.warning("the deltas are not pruned for %s: %s", current, exc)
            return None
        try:
            done = self.prune(cutoff)
        except redis.ResponseError as exc:  # not Redis away (the ingest's loop backs off for that): log, retry later
            log.warning("the deltas are not pruned for %s: %s", current, exc)
            return None
        self.client.set(self.keys.delta_pruned, current)
        return done

    def prune(self, cutoff: float) -> tuple[int, int]:
        """Drop from every delta the rows the store wrote at or before `cutoff` (a delta left with none is deleted);
        returns (rows dropped, deltas deleted)."""
        started = time.monotonic()
        dropped = deleted = scanned = 0
        for batch in _chunks(self.client.scan_iter(match=self.keys.delta_pattern, count=1000), SCAN_BATCH):
            gone, emptied = delta.prune(self.client, batch, cutoff)
            dropped, deleted, scanned = dropped + gone, deleted + emptied, scanned + len(batch)
        log.info(
            "pruned the deltas of %d readers: %d rows dropped, %d deltas deleted, in %.2f s",
            scanned,
            dropped,
            deleted,
            time.monotonic() - started,
        )
        return dropped, deleted


def _chunks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """`items` in lists of at most `size`."""
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
