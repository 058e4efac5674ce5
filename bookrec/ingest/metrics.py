"""What `bookrec ingest` exports (README: Metrics): events by outcome and commit times, counted once per batch, and
at each scrape the consumer group's lag and the dead stream's length, read from Redis.

Every ingest replica reports the same group-wide lag: aggregate it with `max`, not `sum`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bookrec.shared.keys import Keys
from bookrec.shared.ratings import entry_time_ms

logger = logging.getLogger(__name__)

COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OUTCOMES = ("applied", "duplicate", "dead")

EVENTS = Counter(
    "bookrec_ingest_events",
    "Rating events acknowledged, by outcome: applied to the store, duplicate (applied before), dead (refused)",
    ["outcome"],
)
COMMIT_SECONDS = Histogram(
    "bookrec_ingest_commit_seconds", "Time of one batch's store transaction", buckets=COMMIT_BUCKETS
)


def batch_acknowledged(applied: int, duplicate: int, dead: int) -> None:
    """Count one acknowledged batch's events by outcome."""
    for outcome, count in zip(OUTCOMES, (applied, duplicate, dead)):
        if count:
            EVENTS.labels(outcome).inc(count)


def batch_committed(seconds: float) -> None:
    """Observe one batch's store transaction time."""
    COMMIT_SECONDS.observe(seconds)


def oldest_unacknowledged(pending: dict[str, Any], first_undelivered: str | None) -> str | None:
    """The stream id of the oldest entry the group has not acknowledged: the oldest pending one (delivered, not yet
    acknowledged) if any, else the first one not delivered yet (`first_undelivered`), else None."""
    if pending.get("pending"):
        minimum = pending.get("min")
        return minimum.decode() if isinstance(minimum, bytes) else minimum
    return first_undelivered


class LagCollector(Collector):
    """The ingest group's lag on the ratings stream, and the dead stream's length, read at each scrape (left out
    while Redis does not answer, or before the group exists)."""

    def __init__(self, client: redis.Redis, keys: Keys, group: str) -> None:
        self.client, self.keys, self.group = client, keys, group

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        try:
            yield from self._lag()
        except redis.exceptions.RedisError as exc:
            logger.debug("ingest: lag metrics left out of this scrape: %s", exc)

    def _lag(self) -> Iterator[Metric]:
        stream = self.keys.ratings_stream
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xlen(self.keys.ratings_dead)
            pipe.exists(stream)
            now, dead, exists = pipe.execute()
        yield GaugeMetricFamily("bookrec_ingest_dead_entries", "Entries in the dead stream (refused events)", dead)
        if not exists:
            return
        with self.client.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, self.group)
            groups, pending = pipe.execute()
        group = next((g for g in groups if _text(g["name"]) == self.group), None)
        if group is None:
            return
        undelivered = group.get("lag")  # Redis 7; None when Redis cannot tell (entries deleted past the group)
        if undelivered is not None:
            yield GaugeMetricFamily(
                "bookrec_ingest_unacknowledged_entries",
                "Ratings-stream entries the ingest has not acknowledged: not yet read, or read and not yet committed",
                int(undelivered) + int(pending["pending"]),
            )
        first = None
        if not pending["pending"] and undelivered != 0:
            after = self.client.xrange(stream, f"({_text(group['last-delivered-id'])}", "+", count=1)
            first = _text(after[0][0]) if after else None
        oldest = oldest_unacknowledged(pending, first)
        now_ms = now[0] * 1000 + now[1] / 1000
        age = max(0.0, now_ms - entry_time_ms(oldest)) / 1000 if oldest else 0.0
        yield GaugeMetricFamily(
            "bookrec_ingest_oldest_unacknowledged_age_seconds",
            "Age of the oldest ratings-stream entry not acknowledged yet (0 when there is none)",
            age,
        )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
