"""What a due schedule does: ask for a retrain as `bookrec retrain` does, through the retrain lock.

rq.cron's own CronJob enqueues a Python function, pickled with RQ's default serializer, under its module path
(`bookrec.worker.jobs.retrain`). bookrec's workers run only JSON jobs named in the allowlist (`worker.jobs.retrain`)
and a retrain only with the retrain lock, so a ScheduledRetrain's `enqueue` asks `Client.retrain` instead: the job
is the one `bookrec retrain` enqueues, and a retrain already queued or running makes the scheduled one a no-op.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from redis import Redis
from rq import cron_job_registry
from rq.cron import CronJob
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.job import Job

from bookrec.model_store.store import ModelStore
from bookrec.producer.client import Client
from bookrec.scheduler import metrics
from bookrec.scheduler.backlog import horizon, iso
from bookrec.shared import jobs
from bookrec.shared.errors import BookrecError, RedisUnavailable, RetrainRunning
from bookrec.shared.redis_conn import CONNECTION_ERRORS, text

if TYPE_CHECKING:  # the ratings store needs bookrec[store]; `bookrec status` reads the entry names without it
    from bookrec.ratings.store import Changes, RatingsStore

log = logging.getLogger(__name__)

CRON = "retrain-cron"
"""The rq.cron entry of BOOKREC_RETRAIN_CRON (under the key prefix: `bookrec:retrain-cron`)."""
AFTER_RATINGS = "retrain-after-ratings"
"""The rq.cron entry of BOOKREC_RETRAIN_AFTER_RATINGS, an interval of BOOKREC_RETRAIN_CHECK_S seconds."""


def request_retrain(client: Client, why: str, trigger: str = CRON) -> Job | None:
    """Enqueue a retrain with `bookrec retrain`'s defaults through `Client.retrain`, which takes the retrain lock first.

    None, logged, when a retrain is already queued or running (nothing is enqueued and no job fails) or Redis does not
    answer (the next due time tries again). Counted in the metrics under `trigger` (an entry name: CRON, AFTER_RATINGS).
    """
    try:
        job = client.retrain()
    except RetrainRunning as exc:
        log.info("scheduled retrain (%s) not enqueued: %s", why, exc)
        metrics.retrain_asked(trigger, metrics.RUNNING)
        return None
    except RedisUnavailable as exc:
        log.warning("scheduled retrain (%s) not enqueued: %s", why, exc)
        metrics.retrain_asked(trigger, metrics.FAILED)
        return None
    log.info("scheduled retrain (%s) enqueued as job %s on queue %s", why, job.id, job.origin)
    metrics.retrain_asked(trigger, metrics.ENQUEUED)
    return job


class ScheduledRetrain(CronJob):
    """An rq.cron entry (a cron expression or an interval) whose `enqueue` calls `request`, in the scheduler's process,
    and records the retrain job it returns (if any) in rq.cron's job history, `rq:cron_job:{name}:jobs`."""

    def __init__(
        self,
        name: str,
        queue_name: str,
        request: Callable[[], Job | None],
        cron: str | None = None,
        interval: int | None = None,
        meta: dict | None = None,
    ) -> None:
        super().__init__(
            queue_name=queue_name, func_name=jobs.RETRAIN, cron=cron, interval=interval, meta=meta, name=name
        )
        self.request = request

    def enqueue(self, connection: Redis) -> Job | None:  # type: ignore[override]
        """Call `request`; record the job it enqueued as rq.cron records the jobs of its own entries."""
        job = self.request()
        if job is not None:
            with connection.pipeline() as pipe:
                pipe.zadd(self.job_history_key, {job.id: time.time()})
                pipe.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
                pipe.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
                cron_job_registry.add(self.name, pipe)
                pipe.execute()
        return job


class RatingsTrigger:
    """The after-ratings check, a `request` for ScheduledRetrain: a retrain once `threshold` ratings rows were written
    after production's horizon (see `backlog`) and after the mark the last retrain this check enqueued left
    (`schedule:ratings-mark`), so a candidate the gate rejected is not trained again on the same ratings at every check."""

    def __init__(self, client: Client, ratings: RatingsStore, models: ModelStore, threshold: int) -> None:
        self.client, self.ratings, self.models, self.threshold = client, ratings, models, threshold
        self.mark_key = client.keys.ratings_mark

    def __call__(self) -> Job | None:
        """Count; enqueue a retrain (and move the mark) when the count reaches the threshold."""
        try:
            changes, since = self.count()
        except (BookrecError, *CONNECTION_ERRORS) as exc:
            log.warning("ratings check failed, the next one tries again: %s", exc)
            metrics.retrain_asked(AFTER_RATINGS, metrics.FAILED)
            return None
        metrics.ratings_counted(changes.rows)
        if changes.rows < self.threshold:
            log.debug("%d ratings %s, threshold %d", changes.rows, since, self.threshold)
            return None
        why = f"{changes.rows} ratings {since}, threshold {self.threshold}"
        job = request_retrain(self.client, why, AFTER_RATINGS)
        if job is not None:
            self._move_mark(changes.newest_updated_at)
        return job

    def count(self) -> tuple[Changes, str]:
        """The rows written after production's horizon and after the mark, and that moment in words."""
        production = horizon(self.models, self.models.production())
        mark = self._mark()
        if mark is not None and (production.since is None or mark > production.since):
            return self.ratings.changed_since(mark), f"written after those of the last scheduled retrain ({iso(mark)})"
        return self.ratings.changed_since(production.since), production.describe()

    def _mark(self) -> float | None:
        raw = text(self.client.redis.get(self.mark_key))
        try:
            return None if raw is None else float(raw)
        except ValueError:
            log.warning("%s holds %r, not epoch seconds; ignored", self.mark_key, raw[:60])
            return None

    def _move_mark(self, newest: float | None) -> None:
        try:
            self.client.redis.set(self.mark_key, repr(newest))
        except CONNECTION_ERRORS as exc:
            log.warning(
                "%s not moved (%s); the next check may enqueue a retrain on the same ratings", self.mark_key, exc
            )
