"""What a worker process counts for Prometheus: jobs, the lists it computes and caches, the model it serves, its
swaps, the retrains it runs (README: Metrics).

A worker started by its supervisor writes these into the supervisor's multiprocess directory (shared/metrics.py),
and the supervisor serves the sum over its workers; per-process gauges carry a `pid` label there. Everything is
counted once per job or per batch of readers, never per reader, except the event-to-list latency, observed once per
reader whose fresh list was written (a fresh list is what that histogram measures).
"""

from __future__ import annotations

import time
from typing import Iterable

from prometheus_client import Counter, Gauge, Histogram
from rq import get_current_job

from bookrec.shared.ratings import entry_time_ms

JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600)
FRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RETRAIN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)

SUCCEEDED, FAILED = "succeeded", "failed"
NO_QUEUE = "none"
"""The queue label of lists computed outside an RQ job (a job function called directly)."""

JOBS = Counter("bookrec_jobs", "Job runs (each try) by queue and outcome (succeeded, failed)", ["queue", "outcome"])
JOB_SECONDS = Histogram(
    "bookrec_job_duration_seconds",
    "Time from a worker taking a job to its result or failure being written, by queue",
    ["queue"],
    buckets=JOB_BUCKETS,
)
READERS_SCORED = Counter(
    "bookrec_readers_scored", "Readers whose list a job computed (fallbacks included), by queue", ["queue"]
)
FALLBACKS = Counter(
    "bookrec_fallback_lists",
    "Lists computed from the popularity fallback (a reader with nothing to score from), by queue",
    ["queue"],
)
CACHE_WRITES = Counter(
    "bookrec_cache_writes",
    "Lists written to the cache (a list whose reader rated meanwhile is not), by queue",
    ["queue"],
)
FRESH_LATENCY = Histogram(
    "bookrec_fresh_list_latency_seconds",
    "Per reader: from the ratings-stream entry of the newest event a fresh list includes (its id's time) to the "
    "list's cache write",
    buckets=FRESH_BUCKETS,
)
MODEL_SERVED = Gauge(
    "bookrec_model_served",
    "1 for the model version this worker process serves, 0 for one it served before",
    ["version"],
    multiprocess_mode="liveall",
)
SWAP_PENDING = Gauge(
    "bookrec_model_swap_pending",
    "1 while production names a version this worker process does not serve yet",
    multiprocess_mode="liveall",
)
SWAPS = Counter("bookrec_model_swaps", "Swaps to a newly promoted version, by outcome (swapped, failed)", ["outcome"])
SWAP_SECONDS = Histogram(
    "bookrec_model_swap_seconds",
    "Time a successful swap spent loading and warming up the new version",
    buckets=SWAP_BUCKETS,
)
RETRAIN_SECONDS = Histogram(
    "bookrec_retrain_duration_seconds",
    "Time of a retrain job, by outcome (promoted, rejected, unchanged, cancelled, failed)",
    ["outcome"],
    buckets=RETRAIN_BUCKETS,
)
GATE_METRIC = Gauge(
    "bookrec_gate_metric",
    "The gate metric of the last retrain's candidate and of production on the same held-out ratings",
    ["model", "metric"],
    multiprocess_mode="mostrecent",
)


def job_ran(queue: str, succeeded: bool, seconds: float) -> None:
    """Count one run of a job popped from RQ queue `queue` and its duration."""
    JOBS.labels(queue, SUCCEEDED if succeeded else FAILED).inc()
    JOB_SECONDS.labels(queue).observe(seconds)


def current_queue() -> str:
    """The RQ queue of the job this process is running (NO_QUEUE outside one)."""
    job = get_current_job()
    return job.origin if job is not None and job.origin else NO_QUEUE


def lists_cached(queue: str, scored: int, fallbacks: int, written: int) -> None:
    """Count one batch: readers scored, those of them given the fallback, lists written to the cache."""
    READERS_SCORED.labels(queue).inc(scored)
    FALLBACKS.labels(queue).inc(fallbacks)
    CACHE_WRITES.labels(queue).inc(written)


def fresh_latencies(throughs: Iterable[str | None], now: float) -> list[float]:
    """Seconds from each stream id's time (`ms-seq`, Redis's clock) to `now` (epoch seconds); none for a reader
    without one, and never below 0 (a worker's clock behind Redis's)."""
    return [max(0.0, now - entry_time_ms(through) / 1000) for through in throughs if through]


def fresh_lists_written(throughs: Iterable[str | None]) -> None:
    """Observe the event-to-list latency of fresh lists just written, each named by its reader's newest stream id."""
    for seconds in fresh_latencies(throughs, time.time()):
        FRESH_LATENCY.observe(seconds)


def serving(version: str, previous: str | None) -> None:
    """Mark `version` as the one this process serves, and `previous` (if any) as served no more."""
    if previous is not None and previous != version:
        MODEL_SERVED.labels(previous).set(0)
    MODEL_SERVED.labels(version).set(1)


def swap_pending(pending: bool) -> None:
    """Whether a swap to a newly promoted version is pending in this process."""
    SWAP_PENDING.set(1 if pending else 0)


def swapped(seconds: float) -> None:
    """Count a successful swap and the time its load took."""
    SWAPS.labels("swapped").inc()
    SWAP_SECONDS.observe(seconds)


def swap_failed() -> None:
    """Count a swap whose version failed to load."""
    SWAPS.labels(FAILED).inc()


def retrain_ended(outcome: str, seconds: float) -> None:
    """Observe a retrain's duration under its outcome."""
    RETRAIN_SECONDS.labels(outcome).observe(seconds)


def gate_judged(metric: str | None, candidate: float | None, production: float | None) -> None:
    """Record the gate's `metric` for the candidate and for production (a value that is None is left as it was)."""
    if metric is None:
        return
    for model, value in (("candidate", candidate), ("production", production)):
        if value is not None:
            GATE_METRIC.labels(model, metric).set(value)
