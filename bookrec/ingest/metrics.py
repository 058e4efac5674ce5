"""What `bookrec ingest` counts (README: Metrics): events by outcome and commit times, once per batch. The consumer
group's lag, read from Redis at each scrape, is `lag.LagCollector`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
