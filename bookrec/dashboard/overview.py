"""The overview page's data: what `bookrec status` shows (workers with their loaded and pending versions, queues,
failed jobs, the next scheduled retrain, the ratings production has not trained on), production's version page, the
ingest's backlog and dead letters, how many ratings the store took in the last minute, and the latest failed jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.dashboard.sources import Sources
from bookrec.dashboard.versions import VersionView, version_view
from bookrec.ingest.consumer import DeadLetter, dead_letters
from bookrec.ingest.lag import IngestLag, ingest_lag
from bookrec.producer.client import Client
from bookrec.scheduler.status import service_status
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUES

RATE_WINDOW_S = 60
"""The ingest rate is the ratings rows the store wrote in this many seconds before the page was drawn."""
FAILED_SHOWN = 10
DEAD_SHOWN = 5


@dataclass(frozen=True)
class IngestRate:
    """Ratings rows the store wrote in the last `window_s` seconds (live ratings and removals), or why it is unknown."""

    rows: int | None
    window_s: int
    error: str | None

    @property
    def per_second(self) -> float | None:
        """The rate in rows per second."""
        return None if self.rows is None else self.rows / self.window_s


@dataclass(frozen=True)
class FailedJob:
    """One job in a failed registry: its id, queue, function, when it ended and the last line of its error."""

    id: str
    queue: str
    function: str | None
    ended_at: str | None
    reason: str


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows."""

    status: dict[str, Any]
    production: VersionView | None
    production_error: str | None
    ingest: IngestLag
    dead: list[DeadLetter]
    rate: IngestRate
    failed: list[FailedJob]


def overview(sources: Sources) -> Overview:
    """The overview now. RedisUnavailable if Redis does not answer; the model store's and the ratings store's problems
    are shown in their sections instead of failing the page."""
    client = sources.client
    status = service_status(client)
    production, problem = None, None
    if status["production_version"]:
        try:
            production = version_view(sources.models, status["production_version"])
        except BookrecError as exc:
            problem = str(exc)
    return Overview(
        status=status,
        production=production,
        production_error=problem,
        ingest=ingest_lag(client.redis, client.keys),
        dead=dead_letters(client.redis, client.keys, DEAD_SHOWN, newest_first=True),
        rate=ingest_rate(sources),
        failed=failed_jobs(client, FAILED_SHOWN),
    )


def ingest_rate(sources: Sources, window_s: int = RATE_WINDOW_S) -> IngestRate:
    """The ratings rows the store wrote in the last `window_s` seconds (by this host's clock, as the ingest writes
    `updated_at` by its own): one range scan of the `updated_at` index."""
    try:
        rows = sources.ratings().changed_since(time.time() - window_s).rows
    except BookrecError as exc:
        return IngestRate(None, window_s, str(exc))
    return IngestRate(rows, window_s, None)


def failed_jobs(client: Client, limit: int = FAILED_SHOWN) -> list[FailedJob]:
    """The `limit` jobs that failed last, across this deployment's queues, newest first. Read only: no registry
    cleanup; a job hash RQ cannot read is listed with that as its reason."""
    found: list[tuple[float, FailedJob]] = []
    for name in QUEUES:
        queue = client.keys.queue(name)
        registry = FailedJobRegistry(queue, connection=client.redis, serializer=JSONSerializer)
        for job_id in registry.get_job_ids(0, limit - 1, desc=True, cleanup=False):
            failed = _failed_job(client, queue, job_id)
            if failed is not None:
                found.append(failed)
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [job for _, job in found[:limit]]


def _failed_job(client: Client, queue: str, job_id: str) -> tuple[float, FailedJob] | None:
    """(when it ended, as epoch seconds; the job) for one failed job id, None if its hash is gone."""
    try:
        job = Job.fetch(job_id, connection=client.redis, serializer=JSONSerializer)
        result = job.latest_result()
        lines = result.exc_string.strip().splitlines() if result is not None and result.exc_string else []
        ended = job.ended_at
        failed = FailedJob(
            job_id, queue, job.func_name, ended.isoformat() if ended else None, lines[-1] if lines else "-"
        )
        return (ended.timestamp() if ended else 0.0), failed
    except NoSuchJobError:
        return None
    except Exception as exc:  # a hand-written or damaged hash: show it, never fail the page
        return 0.0, FailedJob(job_id, queue, None, None, f"a job hash RQ cannot read ({type(exc).__name__})")
