"""What a supervisor exports itself, read at each scrape: its worker processes, and the backlog of the queues they
serve (jobs waiting, failed jobs kept, readers waiting for a fresh list), read from Redis (README: Metrics).

Every supervisor on the same queues reports the same backlog: aggregate it with `max`, not `sum`.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue
from rq.registry import FailedJobRegistry

from bookrec.shared.keys import QUEUE_FRESH, Keys

logger = logging.getLogger(__name__)


class SupervisorCollector(Collector):
    """The supervisor's own metrics: `processes()` gives (live workers, restarts so far); `queues` are the RQ queue
    names it serves (`fresh`, its logical name, marks the one whose pending readers are reported)."""

    def __init__(
        self, client: redis.Redis | None, keys: Keys, queues: list[str], processes: Callable[[], tuple[int, int]]
    ) -> None:
        self.client, self.keys, self.queues, self.processes = client, keys, queues, processes

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape; the Redis ones are left out while Redis does not answer."""
        alive, restarts = self.processes()
        yield GaugeMetricFamily("bookrec_worker_processes", "Worker processes of this supervisor running", alive)
        yield CounterMetricFamily(
            "bookrec_worker_restarts", "Worker processes this supervisor restarted after they died", restarts
        )
        if self.client is None:
            return
        try:
            yield from self._backlog()
        except redis.exceptions.RedisError as exc:
            logger.debug("supervisor: queue metrics left out of this scrape: %s", exc)

    def _backlog(self) -> Iterator[Metric]:
        fresh = self.keys.queue(QUEUE_FRESH) in self.queues
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for name in self.queues:
                pipe.llen(Queue.redis_queue_namespace_prefix + name)
                pipe.zcount(FailedJobRegistry(name, connection=self.client).key, time.time(), "+inf")
            if fresh:
                pipe.zcard(self.keys.fresh_pending)
                pipe.zrange(self.keys.fresh_pending, 0, 0, withscores=True)
            replies = pipe.execute()
        seconds, microseconds = replies[0]
        now_ms = seconds * 1000 + microseconds / 1000
        waiting = GaugeMetricFamily("bookrec_queue_jobs", "Jobs waiting in a queue", labels=["queue"])
        failed = GaugeMetricFamily(
            "bookrec_queue_failed_jobs", "Failed jobs kept in a queue's failed registry", labels=["queue"]
        )
        for i, name in enumerate(self.queues):
            waiting.add_metric([name], replies[1 + 2 * i])
            failed.add_metric([name], replies[2 + 2 * i])
        yield waiting
        yield failed
        if fresh:
            count, oldest = replies[-2:]
            yield GaugeMetricFamily("bookrec_fresh_pending_readers", "Readers waiting for a fresh list", count)
            age = max(0.0, now_ms - oldest[0][1]) / 1000 if oldest else 0.0
            yield GaugeMetricFamily(
                "bookrec_fresh_oldest_pending_age_seconds", "How long the longest-waiting reader has waited", age
            )
