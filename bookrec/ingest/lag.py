"""How far the ingest is behind the ratings stream, as Redis tells it: the stream's length, the consumer group's
entries not yet delivered (XINFO GROUPS `lag`) and delivered but not acknowledged (`pending`), the age of the oldest
pending entry, each consumer's pending count and idle time, and the dead letters. Read-only: one XINFO STREAM, XINFO
GROUPS, XINFO CONSUMERS, XPENDING and XLEN (README: Ingest). `LagCollector` serves it to Prometheus (README: Metrics)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bookrec.ingest.consumer import GROUP, group_info
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import entry_time_ms
from bookrec.shared.redis_conn import text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Consumer:
    """One consumer of the group: its name (`host-pid`), entries it holds unacknowledged, seconds since it last read."""

    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True)
class IngestLag:
    """The ingest's backlog. `group` is False before any ingest created the group (every entry then waits);
    `undelivered` is None when Redis cannot tell (entries deleted from the middle of the stream); `oldest_age_s` is
    the age of the oldest entry the group has not acknowledged, pending or not delivered yet (None: none waits)."""

    stream: str
    length: int
    entries_added: int
    group: bool
    undelivered: int | None
    pending: int
    oldest_age_s: float | None
    last_delivered: str | None
    consumers: tuple[Consumer, ...]
    dead: int


def ingest_lag(client: redis.Redis, keys: Keys) -> IngestLag:
    """The ratings stream's backlog and dead letters now (ages by Redis's clock)."""
    stream = keys.ratings_stream
    dead = int(client.xlen(keys.ratings_dead))
    if not client.exists(stream):
        return IngestLag(stream, 0, 0, False, 0, 0, None, None, (), dead)
    stream_info = client.xinfo_stream(stream)
    length = int(stream_info["length"])
    added = int(stream_info.get("entries-added", length))
    info = group_info(client, stream)
    if info is None:
        first = stream_info.get("first-entry")
        return IngestLag(
            stream, length, added, False, length, 0, _age(client, first[0] if first else None), None, (), dead
        )
    last = text(info.get("last-delivered-id"))
    undelivered = None if info.get("lag") is None else int(info["lag"])
    pending = int(info["pending"])
    if pending:
        oldest = text(client.xpending(stream, GROUP)["min"])
    else:
        after = client.xrange(stream, min=f"({last}", count=1) if undelivered != 0 else []
        oldest = text(after[0][0]) if after else None
    consumers = tuple(
        Consumer(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
        for c in client.xinfo_consumers(stream, GROUP)
    )
    return IngestLag(stream, length, added, True, undelivered, pending, _age(client, oldest), last, consumers, dead)


def _age(client: redis.Redis, stream_id: bytes | str | None) -> float | None:
    """Seconds since Redis added the entry `stream_id` (its id is its time), by Redis's clock; None for no entry."""
    if stream_id is None:
        return None
    seconds, micro = client.time()
    return max(0.0, seconds + micro / 1e6 - entry_time_ms(text(stream_id)) / 1000)


class LagCollector(Collector):
    """The ingest's lag (`ingest_lag`) as gauges, read at each scrape; left out while Redis does not answer. Every
    ingest replica reports the same group-wide values: aggregate them with `max`, not `sum`."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        try:
            lag = ingest_lag(self.client, self.keys)
        except redis.exceptions.RedisError as exc:
            logger.debug("ingest: lag metrics left out of this scrape: %s", exc)
            return
        yield GaugeMetricFamily("bookrec_ingest_dead_entries", "Entries in the dead stream (refused events)", lag.dead)
        if lag.undelivered is not None:
            yield GaugeMetricFamily(
                "bookrec_ingest_unacknowledged_entries",
                "Ratings-stream entries the ingest has not acknowledged: not yet read, or read and not yet committed",
                lag.undelivered + lag.pending,
            )
        yield GaugeMetricFamily(
            "bookrec_ingest_oldest_unacknowledged_age_seconds",
            "Age of the oldest ratings-stream entry not acknowledged yet (0 when there is none)",
            lag.oldest_age_s or 0.0,
        )
