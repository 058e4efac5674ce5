"""What `bookrec scheduler` exports (README: Metrics): the retrains its schedule asked for, and the ratings its last
after-ratings check counted."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ENQUEUED, RUNNING, FAILED = "enqueued", "running", "failed"

RETRAINS = Counter(
    "bookrec_scheduler_retrains",
    "Retrains the schedule asked for, by trigger (its rq.cron entry) and outcome: enqueued, running (one was already "
    "queued or running: a no-op), failed (Redis or the ratings store did not answer)",
    ["trigger", "outcome"],
)
NEW_RATINGS = Gauge(
    "bookrec_scheduler_new_ratings",
    "Ratings rows the last after-ratings check counted: written after production's snapshot and after the ratings "
    "of the last retrain it enqueued",
)


def retrain_asked(trigger: str, outcome: str) -> None:
    """Count one retrain the schedule asked for, under its trigger and outcome."""
    RETRAINS.labels(trigger, outcome).inc()


def ratings_counted(rows: int) -> None:
    """Record what the last after-ratings check counted."""
    NEW_RATINGS.set(rows)
