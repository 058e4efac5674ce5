"""The `bookrec scheduler` process: rq.cron's CronScheduler holding this deployment's retrain entries.

rq.cron runs the loop (sleeping until the next entry is due, at most 60 s), registers the scheduler in its registry
(`rq:cron_schedulers`, a hash `rq:cron_scheduler:{name}` holding each entry's next due time, both kept alive by a
heartbeat) and stops on SIGTERM or SIGINT, unregistering. One scheduler per deployment is enough; a second one fires
the same schedule, and the retrain lock makes its retrains no-ops (it warns at start when it sees another).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from contextlib import suppress
from typing import TYPE_CHECKING

import redis
from rq.cron import CronScheduler
from rq.exceptions import SchedulerNotFound, StopRequested

from bookrec.model_store.store import ModelStore
from bookrec.producer.client import Client
from bookrec.scheduler.status import schedulers
from bookrec.scheduler.triggers import AFTER_RATINGS, CRON, RatingsTrigger, ScheduledRetrain, request_retrain
from bookrec.shared.keys import QUEUE_RETRAIN
from bookrec.shared.metrics import process_registry, serve
from bookrec.shared.redis_conn import CONNECTION_ERRORS, refuses_writes
from bookrec.shared.settings import Settings

if TYPE_CHECKING:
    from redis.client import Pipeline

    from bookrec.ratings.store import RatingsStore

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0
"""The longest wait before starting again after Redis was lost (1 s, doubling)."""


class RetrainScheduler(CronScheduler):
    """rq.cron's scheduler (its loop, registry, heartbeat and signal handling) with ScheduledRetrain entries."""

    def add(self, entry: ScheduledRetrain) -> None:
        """Add an entry (rq.cron's `register` builds only CronJobs that enqueue a Python function)."""
        self._cron_jobs.append(entry)
        when = f"on cron '{entry.cron}' (local time)" if entry.cron else f"every {entry.interval} s"
        log.info("scheduler %s: %s %s, retrains on queue %s", self.name, entry.name, when, entry.queue_name)

    def register_death(self, pipeline: Pipeline | None = None) -> None:
        """Leave rq.cron's registry; an entry already gone (Redis flushed, or restarted empty) is no error."""
        with suppress(SchedulerNotFound):
            super().register_death(pipeline)


def build(settings: Settings, client: Client, ratings: RatingsStore | None) -> RetrainScheduler:
    """A scheduler named `PREFIX{host}:{pid}:{random}` with an entry per trigger set in `settings`; the after-ratings
    trigger counts in `ratings` (needed when BOOKREC_RETRAIN_AFTER_RATINGS is set)."""
    keys = client.keys
    name = f"{keys.prefix}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    scheduler = RetrainScheduler(client.redis, logging_level=settings.log_level, name=name)
    queue = keys.queue(QUEUE_RETRAIN)
    if settings.retrain_cron:
        why = f"cron '{settings.retrain_cron}'"
        scheduler.add(
            ScheduledRetrain(
                keys.cron_job(CRON), queue, lambda: request_retrain(client, why), cron=settings.retrain_cron
            )
        )
    if settings.retrain_after_ratings:
        threshold = settings.retrain_after_ratings
        trigger = RatingsTrigger(client, ratings, ModelStore(settings.model_store), threshold)
        scheduler.add(
            ScheduledRetrain(
                keys.cron_job(AFTER_RATINGS),
                queue,
                trigger,
                interval=settings.retrain_check_s,
                meta={"after_ratings": threshold},
            )
        )
    return scheduler


def run(settings: Settings, client: Client, ratings: RatingsStore | None) -> None:
    """Run the schedule until SIGTERM or SIGINT, serving its metrics on BOOKREC_SCHEDULER_METRICS_PORT (0: none)."""
    metrics = serve(process_registry(), settings.metrics_host, settings.scheduler_metrics_port, "scheduler")
    try:
        _schedule(settings, client, ratings)
    finally:
        if metrics is not None:
            metrics.stop()


def _schedule(settings: Settings, client: Client, ratings: RatingsStore | None) -> None:
    """Run the schedule until SIGTERM or SIGINT. When Redis is lost or refuses writes: log, wait (1 s doubling to 30 s),
    and start again as a new scheduler (a new name: the old one's registry entry expires 120 s after its last heartbeat)."""
    delay = 1.0
    while True:
        scheduler = build(settings, client, ratings)
        started = time.monotonic()
        try:
            _warn_of_others(scheduler, client)
            scheduler.start()
            return
        except StopRequested:  # a signal before rq.cron's loop caught it
            return
        except (*CONNECTION_ERRORS, redis.exceptions.ResponseError) as exc:
            if isinstance(exc, redis.exceptions.ResponseError) and not refuses_writes(exc):
                raise
            delay = 1.0 if time.monotonic() - started > RECONNECT_MAX_S else delay
            log.warning("scheduler %s lost Redis (%s); starting again in %.0f s", scheduler.name, exc, delay)
        try:
            time.sleep(delay)  # rq.cron's signal handlers stay installed: SIGTERM raises StopRequested here too
        except StopRequested:
            return
        delay = min(delay * 2, RECONNECT_MAX_S)


def _warn_of_others(scheduler: RetrainScheduler, client: Client) -> None:
    """Log a warning naming the other live schedulers of this deployment (not this process's own earlier ones)."""
    own = scheduler.name.rsplit(":", 1)[0] + ":"
    others = [s.name for s in schedulers(client.redis, client.keys) if not s.name.startswith(own)]
    if others:
        log.warning(
            "another bookrec scheduler runs for this deployment (%s): each fires the schedule it was given, and the "
            "retrain lock turns all but the first retrain into no-ops; one scheduler per deployment is enough",
            ", ".join(others),
        )
