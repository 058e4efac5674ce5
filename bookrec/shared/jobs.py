"""The public job names and how each job is enqueued: the producer-worker contract, spelt out once.

Other services enqueue these names (RQ's JSON serializer, keyword arguments as in the README);
the worker's allowlist maps each name to its function. Options are the defaults every caller uses,
as RQ keeps its own in `rq.defaults`.
"""

from __future__ import annotations

from typing import Any

from rq import Queue, Retry
from rq.queue import EnqueueData

from bookrec.shared.keys import QUEUE_FRESH, QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN
from bookrec.shared.settings import Settings

RECOMMEND = "worker.jobs.recommend"
"""Compute and cache the top-n lists of up to 1,000 users: kwargs `user_ids`, `n`; on `recommend` or `refresh`."""
REFRESH = "worker.jobs.refresh"
"""Recompute every known user's list by fanning out recommend chunks: kwargs `start`, `stop`, `n`; on `refresh`."""
RETRAIN = "worker.jobs.retrain"
"""Train, gate and maybe promote a new version: kwargs `model`, `params`, `ratings` (null: the ratings store), `books`,
`force`; on `retrain`."""
FRESH = "worker.jobs.fresh"
"""Recompute the lists of readers whose ratings changed since their list was computed: kwargs `user_ids`; on
`fresh`, enqueued by the ingest right after it commits their ratings."""
NAMES = (RECOMMEND, REFRESH, RETRAIN, FRESH)

RETRIES = 2
"""Tries RQ gives a failed recommend or refresh job again (a worker that died holding one costs no try)."""
RESULT_TTL = 600
"""Seconds a finished recommend or refresh job's result stays readable (`Client.wait` reads it)."""
FAILURE_TTL = 86400
"""Seconds a failed recommend job stays in its failed registry, for `bookrec status` and operators."""
RETRAIN_TIMEOUT = 6 * 3600
"""Seconds a retrain may run before RQ stops it."""
RETRAIN_TTL = 7 * 86400
"""Seconds a retrain's result or failure stays readable (`bookrec retrain --wait`, the versions' history)."""
MAX_TIMEOUT = RETRAIN_TIMEOUT
"""The longest timeout a worker accepts from a job hash: a longer one, or RQ's -1 (no limit), is clamped to it."""
MAX_TTL = RETRAIN_TTL
"""The longest `result_ttl`, `failure_ttl` or `ttl` a worker accepts from a job hash: a longer one is clamped to it."""


def recommend(kwargs: dict[str, Any], settings: Settings, description: str | None = None) -> EnqueueData:
    """A recommend job for `Queue.enqueue_many` (on `recommend`, or on `refresh` as a refresh chunk)."""
    return _serving_job(RECOMMEND, kwargs, settings, description)


def fresh(kwargs: dict[str, Any], settings: Settings, description: str | None = None) -> EnqueueData:
    """A fresh-lists job for `Queue.enqueue_many` on `fresh` (the ingest enqueues one per batch it commits)."""
    return _serving_job(FRESH, kwargs, settings, description)


def refresh(kwargs: dict[str, Any], settings: Settings, description: str | None = None) -> EnqueueData:
    """A refresh job for `Queue.enqueue_many` on `refresh`."""
    return _serving_job(REFRESH, kwargs, settings, description)


def _serving_job(name: str, kwargs: dict[str, Any], settings: Settings, description: str | None) -> EnqueueData:
    """A job for the serving workers: the service's timeout, RETRIES tries, RESULT_TTL and FAILURE_TTL."""
    return Queue.prepare_data(
        name,
        kwargs=kwargs,
        timeout=settings.job_timeout,
        retry=Retry(max=RETRIES),
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=description,
    )


def retrain(kwargs: dict[str, Any], job_id: str) -> EnqueueData:
    """A retrain job for `Queue.enqueue_many` on `retrain`; `job_id` is the one the retrain lock names."""
    return Queue.prepare_data(
        RETRAIN, kwargs=kwargs, job_id=job_id, timeout=RETRAIN_TIMEOUT, result_ttl=RETRAIN_TTL, failure_ttl=RETRAIN_TTL
    )


QUEUE_OF = {RECOMMEND: QUEUE_RECOMMEND, REFRESH: QUEUE_REFRESH, RETRAIN: QUEUE_RETRAIN, FRESH: QUEUE_FRESH}
"""The queue each job name is enqueued on by default (refresh chunks are recommend jobs on `refresh`)."""

RUNS_ON: dict[str, tuple[str, ...]] = {
    RECOMMEND: (QUEUE_RECOMMEND, QUEUE_REFRESH),
    REFRESH: (QUEUE_RECOMMEND, QUEUE_REFRESH),
    RETRAIN: (QUEUE_RETRAIN,),
    FRESH: (QUEUE_FRESH,),
}
"""The logical queues each job name may run on: the job functions that need the served model on the serving
queues (a fresh-lists job on `fresh` only), retrain only on `retrain` (its trainer). A worker fails a job that
arrives on any other queue."""
