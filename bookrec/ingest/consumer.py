"""One ingest consumer: read the ratings stream through the group `bookrec-ingest`, apply each batch to the ratings
store in one transaction, then acknowledge it; bad events go to the dead stream (README: Ingest).

Exactly once: an entry is acknowledged only after its batch committed, so a crash redelivers it, and the store skips
an event whose stream id or event_id it applied before. Dead letters and acknowledgements go in one MULTI, so a
redelivered bad entry is dead-lettered once; so do the committed rows for the readers' deltas and the fresh jobs
recomputing their lists (ingest/fresh.py), so a redelivered batch writes them again (the same rows: idempotent).

A running ingest (`run`) acknowledges each batch on a thread of its own while it reads and commits the next one, so
Redis's work on one batch overlaps the store's on the next; acknowledgements still land one at a time, in order.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import redis

from bookrec.ingest import fresh, metrics
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import BadEvent, RatingsStoreError, ValidationError
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import REASON, RatingEvent, StoredRating, entry_time_ms, parse_event
from bookrec.shared.redis_conn import CONNECTION_ERRORS, Backoff
from bookrec.shared.settings import Settings

log = logging.getLogger(__name__)

GROUP = "bookrec-ingest"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
RETRIED = (RatingsStoreError, *CONNECTION_ERRORS)
"""What the ingest waits out with backoff: the store or Redis not answering (or refusing a statement)."""
TRIM_EVERY_S = 1.0
"""How often a running ingest trims the stream below what the group acknowledged (each trim is two round trips)."""

Entry = tuple[str, dict[bytes, bytes] | None]
"""A stream entry as read: its id and fields (None for an entry deleted while it was pending)."""


@dataclass(frozen=True)
class BatchResult:
    """What one batch did: entries read, events applied, duplicates skipped, bad events dead-lettered."""

    read: int = 0
    applied: int = 0
    duplicate: int = 0
    dead: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A refused entry: its stream id, original fields and the reason."""

    stream_id: str
    fields: dict[bytes, bytes]
    reason: str


@dataclass(frozen=True)
class _Committed:
    """A batch the store committed and Redis has not acknowledged yet: what its acknowledging MULTI writes."""

    ids: list[str]
    dead: list[DeadLetter]
    rows: list[StoredRating]
    newest: dict[str, str]
    result: BatchResult


def consumer_name() -> str:
    """This process's consumer name in the group: `host-pid`, unique per process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Ingest:
    """A consumer of the group `bookrec-ingest` writing into one RatingsStore."""

    def __init__(self, client: redis.Redis, store: RatingsStore, settings: Settings, name: str | None = None) -> None:
        self.client, self.store, self.settings = client, store, settings
        self.keys = Keys(settings.key_prefix)
        self.name = name or consumer_name()
        self.stop = threading.Event()
        self.deltas = fresh.Deltas(client, store, settings)

    def ensure_group(self) -> bool:
        """Create the consumer group (reading from the stream's start, creating the stream) unless it exists; True
        if it was created. Redis without the group is a new or an emptied Redis: the deltas are rebuilt then."""
        try:
            self.client.xgroup_create(self.keys.ratings_stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        self.deltas.rebuild()
        return True

    def _group_exists(self) -> bool:
        return group_info(self.client, self.keys.ratings_stream) is not None

    def read(self, block_ms: int | None = None, new_only: bool = False) -> list[Entry]:
        """The next batch: this consumer's own pending entries first (a batch whose commit failed), then entries
        another consumer left pending longer than BOOKREC_INGEST_CLAIM_S (XAUTOCLAIM), then new ones (XREADGROUP);
        with `new_only`, new ones only (while a batch of this consumer's own is being acknowledged)."""
        count = self.settings.ingest_batch
        if new_only:
            return self._group_read(">", count, block_ms)
        stream = self.keys.ratings_stream
        own = self._group_read("0", count, None)
        if own:
            return own
        claimed = self.client.xautoclaim(stream, GROUP, self.name, self.settings.ingest_claim_s * 1000, "0-0", count)
        deleted = claimed[2] if len(claimed) > 2 else []  # ids of pending entries no longer in the stream
        entries = [(_text(i), f) for i, f in claimed[1]] + [(_text(i), None) for i in deleted]
        if entries:
            log.info("claimed %d entries left pending by another consumer", len(entries))
            return entries
        return self._group_read(">", count, block_ms)

    def _group_read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(GROUP, self.name, {self.keys.ratings_stream: start}, count=count, block=block_ms)
        return [(_text(i), f or None) for _stream, entries in reply or [] for i, f in entries]

    def process(self, entries: Sequence[Entry]) -> BatchResult:
        """Validate `entries`, apply the good ones in one transaction, then dead-letter the bad ones and acknowledge
        all of them at once. RatingsStoreError (nothing acknowledged) if the store fails."""
        batch = self._commit(entries)
        self._acknowledge(batch)
        return batch.result

    def _commit(self, entries: Sequence[Entry]) -> _Committed:
        """Validate `entries` and apply the good ones in one transaction; what acknowledging them then writes."""
        events, dead = self._parse(entries)
        started = time.perf_counter()
        applied, duplicate, refused, rows = self._apply(events)
        if events:
            metrics.batch_committed(time.perf_counter() - started)
        dead += refused
        refused_ids = {letter.stream_id for letter in refused}
        newest = fresh.throughs(e for e, _ in events if e.stream_id not in refused_ids)
        result = BatchResult(read=len(entries), applied=applied, duplicate=duplicate, dead=len(dead))
        if entries:
            log.info("batch of %d: %d applied, %d duplicate, %d dead", result.read, applied, duplicate, result.dead)
        return _Committed([i for i, _ in entries], dead, rows, newest, result)

    def _parse(self, entries: Sequence[Entry]) -> tuple[list[tuple[RatingEvent, dict]], list[DeadLetter]]:
        """The good events (each with its fields) and the dead letters among `entries`; deleted entries are neither."""
        events, dead = [], []
        for stream_id, fields in entries:
            if fields is None:
                continue
            try:
                event = parse_event(fields, stream_id, entry_time_ms(stream_id), self.settings.rating_scale)
            except BadEvent as exc:
                dead.append(DeadLetter(stream_id, fields, exc.reason))
                continue
            events.append((event, fields))
        return events, dead

    def _apply(self, events: list[tuple[RatingEvent, dict]]) -> tuple[int, int, list[DeadLetter], list[StoredRating]]:
        """Apply the batch in one transaction; if the store refuses an event (ValidationError), apply them one by one
        so that event is dead-lettered and the rest of the batch still goes in. Returns applied, duplicate, refused,
        and the store's rows of the pairs the applied events name, as they stood at the commit."""
        if not events:
            return 0, 0, [], []
        try:
            result = self.store.apply([e for e, _ in events])
            return result.applied, result.duplicate, [], list(result.rows)
        except ValidationError:
            log.warning("the store refused an event of the batch; applying its %d events one at a time", len(events))
        applied = duplicate = 0
        refused, rows = [], []
        for event, fields in events:
            try:
                result = self.store.apply([event])
            except ValidationError as exc:
                refused.append(DeadLetter(str(event.stream_id), fields, str(exc)))
                continue
            applied, duplicate = applied + result.applied, duplicate + result.duplicate
            rows += result.rows
        return applied, duplicate, refused, rows

    def _acknowledge(self, batch: _Committed) -> None:
        """In one MULTI: the committed rows into their readers' deltas and fresh jobs for those readers (see
        ingest/fresh.py), the dead letters into the dead stream, and the acknowledgement of the batch's entries; then
        the batch's events are counted in the metrics (ingest/metrics.py)."""
        if not batch.ids:
            return
        pipe = self.client.pipeline(transaction=True)
        position = fresh.queue_after_commit(pipe, self.keys, batch.rows, batch.newest)
        for letter in batch.dead:
            log.warning("dead-lettered %s: %s", letter.stream_id, letter.reason)
            pipe.xadd(self.keys.ratings_dead, {**letter.fields, REASON: letter.reason})
        pipe.xack(self.keys.ratings_stream, GROUP, *batch.ids)
        replies = pipe.execute()
        metrics.batch_acknowledged(batch.result.applied, batch.result.duplicate, batch.result.dead)
        fresh.wake_if_asked(self.client, self.keys, self.settings, replies, position)

    def trim(self) -> int:
        """Trim the stream below what the group has acknowledged: below its oldest pending entry, or its last
        delivered one when nothing is pending. Returns the entries removed."""
        stream = self.keys.ratings_stream
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, GROUP)
        groups, pending = pipe.execute()
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None:
            return 0
        floor = _text(pending["min"]) if pending["pending"] else _text(group["last-delivered-id"])
        return int(self.client.xtrim(stream, minid=floor, approximate=False))

    def step(self, block_ms: int | None = None) -> BatchResult:
        """Read and process one batch, then trim the stream; prune the deltas if production moved (`Deltas`)."""
        entries = self.read(block_ms)
        result = self.process(entries)
        if entries:
            self.trim()
        self.deltas.upkeep_if_due()
        return result

    def run(self) -> None:
        """Process batches until `stop` is set (checked after each batch), each acknowledged on a thread of its own
        while the next is read and committed (`_Acknowledger`). While the store or Redis is down, at the start
        (migrating the store, creating the group) or later, log and retry with backoff: the entries wait in the
        stream, unacknowledged."""
        backoff = Backoff(log, BACKOFF_START_S, BACKOFF_MAX_S)
        if not self._start(backoff):
            return
        log.info("ingest %s reads %s in group %s", self.name, self.keys.ratings_stream, GROUP)
        acks = _Acknowledger(self)
        try:
            while not self.stop.is_set():
                try:
                    self._overlapped_step(acks)
                    backoff.reset()
                except RETRIED as exc:
                    acks.settle(quiet=True)
                    backoff.pause("ingest paused", exc, self.stop)
                except redis.ResponseError:
                    acks.settle(quiet=True)
                    if self._group_exists():
                        raise
                    log.warning(
                        "the consumer group %s is gone (Redis flushed or restarted empty); creating it again", GROUP
                    )
                    self.ensure_group()
        finally:
            acks.close()
        log.info("ingest %s stopped", self.name)

    def _overlapped_step(self, acks: "_Acknowledger") -> None:
        """`step`, with the batch handed to `acks`: read and commit a batch while the previous one is acknowledged,
        then wait for that one and hand this one over. A full `read` (own pending entries, claims) waits for the
        acknowledgement first, and happens at least every half BOOKREC_INGEST_CLAIM_S."""
        if acks.busy and time.monotonic() >= acks.next_full_read:
            acks.settle()
        entries = self.read(self.settings.ingest_block_ms, new_only=acks.busy)
        if not acks.busy:
            acks.next_full_read = time.monotonic() + self.settings.ingest_claim_s / 2
        if entries:
            batch = self._commit(entries)
            acks.settle()
            acks.submit(batch)
        else:
            acks.settle()
            acks.trim_if_due()  # idle: the last batches' entries go too
        self.deltas.upkeep_if_due()

    def _start(self, backoff: Backoff) -> bool:
        """Migrate the store, then create the group (so a group means a ready ingest), retrying while either is
        down; False if stopped meanwhile."""
        while not self.stop.is_set():
            try:
                self.store.upgrade()
                self.ensure_group()
                backoff.reset()
                return True
            except RETRIED as exc:
                backoff.pause("ingest cannot start yet", exc, self.stop)
        log.info("ingest %s stopped before it started", self.name)
        return False


class _Acknowledger:
    """One thread acknowledging an ingest's committed batches (`Ingest._acknowledge`, then a trim at most every
    TRIM_EVERY_S), one at a time."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-ack-{ingest.name}")
        self.future: Future[None] | None = None
        self.next_full_read = 0.0
        self.next_trim = 0.0
        self.owed = False  # entries acknowledged since the last trim

    @property
    def busy(self) -> bool:
        """Whether a batch is handed over and not yet settled."""
        return self.future is not None

    def submit(self, batch: _Committed) -> None:
        """Acknowledge `batch` on the thread; the previous one must be settled."""
        assert self.future is None, "settle the previous acknowledgement first"
        self.future = self.pool.submit(self._acknowledge, batch)

    def _acknowledge(self, batch: _Committed) -> None:
        self.ingest._acknowledge(batch)
        self.owed = True
        self.trim_if_due()

    def trim_if_due(self) -> None:
        """Trim the stream if entries were acknowledged since the last trim and TRIM_EVERY_S has passed since it."""
        if self.owed and time.monotonic() >= self.next_trim:
            self.next_trim, self.owed = time.monotonic() + TRIM_EVERY_S, False
            self.ingest.trim()

    def settle(self, quiet: bool = False) -> None:
        """Wait for the batch handed over, if any; its error is raised, or with `quiet` logged (after an error
        of the loop's own: its entries stay pending and are read again)."""
        future, self.future = self.future, None
        if future is None:
            return
        try:
            future.result()
        except Exception as exc:
            if not quiet:
                raise
            log.warning("a batch was not acknowledged and will be read again: %s", exc)

    def close(self) -> None:
        """Settle the batch handed over (quietly) and stop the thread."""
        self.settle(quiet=True)
        self.pool.shutdown(wait=True)


def group_info(client: redis.Redis, stream: str) -> dict[str, Any] | None:
    """The ingest's consumer group on `stream` as XINFO GROUPS describes it, None before it is created."""
    if not client.exists(stream):
        return None
    return next((g for g in client.xinfo_groups(stream) if _text(g["name"]) == GROUP), None)


def dead_letters(
    client: redis.Redis, keys: Keys, count: int | None = None, newest_first: bool = False
) -> list[DeadLetter]:
    """The dead stream's entries, oldest first, or newest first with `newest_first` (at most `count`)."""
    read = client.xrevrange if newest_first else client.xrange
    entries = read(keys.ratings_dead, count=count)
    return [_letter(_text(i), fields) for i, fields in entries]


def replay(client: redis.Redis, keys: Keys) -> int:
    """Send every dead letter back to the ratings stream without its `reason` (the ingest validates it again) and
    remove it from the dead stream, each in one MULTI. Returns how many."""
    done = 0
    for stream_id, fields in client.xrange(keys.ratings_dead):
        original = {k: v for k, v in fields.items() if _text(k) != REASON}
        pipe = client.pipeline(transaction=True)
        pipe.xadd(keys.ratings_stream, original or {REASON: b""})  # an entry needs a field; this one is dead again
        pipe.xdel(keys.ratings_dead, stream_id)
        pipe.execute()
        done += 1
    return done


def _letter(stream_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    reason = next((_text(v) for k, v in fields.items() if _text(k) == REASON), "")
    return DeadLetter(stream_id, {k: v for k, v in fields.items() if _text(k) != REASON}, reason)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
