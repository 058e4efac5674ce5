"""`python -m bookrec.bench.load [--jobs N]`: N single-user recommend jobs through real worker processes; none may fail or be lost.

Another service's view: N calls of `bookrec.producer.Client.recommend([user])` (one job each, with
RQ's Retry(max=2)) while a `bookrec worker --processes P` pool serves them. Every job is
followed to its end by reading its status, oldest first: FINISHED counts as done, FAILED as
failed, and a job whose record vanishes before it finished, or that has not finished by the
deadline, as lost. At the end it checks that the queue and the started registry are empty,
that every requested user has a cached list, that no worker was restarted, and reports the
workers' resident memory at the start, after a warm-up and at the end. Prints a JSON summary
(a Markdown table with --markdown); exits 1 if a job failed or was lost.

The catalogue and its model are the benchmark's (cached under var/bench/, see bench/catalogue.py);
the Redis database is one of its own (--redis-db, default 11), flushed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import redis
from rq.job import Job

from bookrec.bench import catalogue, machine
from bookrec.bench.service import Pool, Service, with_db
from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_RECOMMEND
from bookrec.shared.settings import Settings

Notify = Callable[[str], None]
POLL_BATCH = 1000


class Tracker:
    """Follows every enqueued job to its end by reading its status in Redis, oldest first."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pending: deque[str] = deque()
        self.finished = 0
        self.failed: list[str] = []
        self.lost: list[str] = []

    def add(self, job_id: str) -> None:
        """Follow one more job."""
        self.pending.append(job_id)

    def poll(self) -> None:
        """Settle the oldest pending jobs that have ended, batch by batch, until a batch has none that ended."""
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(POLL_BATCH, len(self.pending)))]
            with self.client.pipeline(transaction=False) as pipe:
                for job_id in batch:
                    pipe.hget(Job.key_for(job_id), "status")
                statuses = pipe.execute()
            running = [job_id for job_id, status in zip(batch, statuses) if not self._settle(job_id, status)]
            self.pending.extendleft(reversed(running))
            if len(running) == len(batch):
                return

    def _settle(self, job_id: str, status: bytes | None) -> bool:
        """Count a job that has ended (or vanished); False while it is queued, started or being retried."""
        if status == b"finished":
            self.finished += 1
        elif status == b"failed":
            self.failed.append(job_id)
        elif status is None:  # its record expired or was deleted before it finished
            self.lost.append(job_id)
        else:
            return False
        return True


@dataclass
class LoadResult:
    """What a load run found. Memory is resident set size in MB per worker process."""

    jobs: int
    processes: int
    seconds: float = 0.0
    jobs_per_s: float = 0.0
    finished: int = 0
    failed: int = 0
    lost: int = 0
    queued_left: int = 0
    started_left: int = 0
    users_requested: int = 0
    users_not_cached: int = 0
    workers_restarted: int = 0
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    rss_growth_after_warmup_mb: float = 0.0
    rss_growth_from_start_mb: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing lost, everything drained and cached, no restart."""
        return (
            self.failed
            == self.lost
            == self.queued_left
            == self.started_left
            == self.users_not_cached
            == self.workers_restarted
            == 0
            and self.finished == self.jobs
        )


def run(
    service: Service,
    pids: list[int],
    users: list[str],
    jobs: int,
    processes: int,
    n: int = 10,
    timeout: float = 3600.0,
    notify: Notify = lambda message: None,
) -> LoadResult:
    """Send `jobs` single-user recommend jobs (users taken in turn from `users`) to the workers `pids`; follow each to its end."""
    client = Client(settings=service.settings)
    tracker = Tracker(service.client)
    result = LoadResult(jobs, processes)
    warm_at = max(1, min(jobs, max(1000, jobs // 20)))
    rss = {"start": _rss(pids)}
    started = time.monotonic()
    for i in range(jobs):
        tracker.add(client.recommend([users[i % len(users)]], n=n)[0].id)
        if (i + 1) % POLL_BATCH == 0:
            tracker.poll()
            _sample_warm(rss, tracker, warm_at, pids)
            if (i + 1) % (20 * POLL_BATCH) == 0:
                notify(
                    f"{i + 1:,} jobs enqueued, {tracker.finished:,} finished, {len(tracker.failed)} failed, {len(tracker.lost)} lost"
                )
    deadline = started + timeout
    while tracker.pending and time.monotonic() < deadline:
        tracker.poll()
        _sample_warm(rss, tracker, warm_at, pids)
        time.sleep(0.2)
    result.seconds = round(time.monotonic() - started, 1)
    rss["end"] = _rss(pids)
    _record(result, service, tracker, users[:jobs], rss, pids)
    return result


def _sample_warm(rss: dict[str, list[float]], tracker: Tracker, warm_at: int, pids: list[int]) -> None:
    if "warm" not in rss and tracker.finished >= warm_at:
        rss["warm"] = _rss(pids)


def _rss(pids: list[int]) -> list[float]:
    return [round(machine.rss_mb(pid), 1) for pid in pids]


def _record(
    result: LoadResult,
    service: Service,
    tracker: Tracker,
    users: list[str],
    rss: dict[str, list[float]],
    pids: list[int],
) -> None:
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer

    result.jobs_per_s = round(tracker.finished / result.seconds, 1) if result.seconds else 0.0
    result.finished, result.failed = tracker.finished, len(tracker.failed)
    result.lost = len(tracker.lost) + len(tracker.pending)
    result.examples = {
        k: v[:5] for k, v in (("failed", tracker.failed), ("lost", tracker.lost + list(tracker.pending))) if v
    }
    result.queued_left = service.queue(QUEUE_RECOMMEND).count
    result.started_left = StartedJobRegistry(
        service.keys.queue(QUEUE_RECOMMEND), connection=service.client, serializer=JSONSerializer
    ).get_job_count(cleanup=False)
    distinct = sorted(set(users))
    result.users_requested = len(distinct)
    result.users_not_cached = sum(
        entry is None
        for first in range(0, len(distinct), 5000)
        for entry in service.client.mget([service.keys.recs(u) for u in distinct[first : first + 5000]])
    )
    result.workers_restarted = len(set(pids) - {int(state["pid"]) for state in service.serving_workers().values()})
    rss.setdefault("warm", rss["start"])
    result.rss_mb = rss
    result.rss_growth_after_warmup_mb = round(max(e - w for e, w in zip(rss["end"], rss["warm"])), 1)
    result.rss_growth_from_start_mb = round(max(e - s for e, s in zip(rss["end"], rss["start"])), 1)


def markdown(result: LoadResult, details: dict[str, object]) -> str:
    """The result as a Markdown table (what docs/faults.md shows)."""
    rows = [
        ("date", details["date"]),
        ("catalogue / model", f"{details['catalogue']} / {details['model']}"),
        ("jobs (single-user recommend, n=10)", f"{result.jobs:,} through {result.processes} worker processes"),
        ("finished / failed / lost", f"{result.finished:,} / {result.failed} / {result.lost}"),
        ("queue / started registry at the end", f"{result.queued_left} / {result.started_left}"),
        ("users requested / without a cached list", f"{result.users_requested:,} / {result.users_not_cached}"),
        ("workers restarted", str(result.workers_restarted)),
        (
            "time, throughput",
            f"{result.seconds:,.0f} s, {result.jobs_per_s:,.0f} jobs/s (enqueueing and serving at once)",
        ),
        (
            "worker RSS start -> warm -> end (MB)",
            "; ".join(
                f"{s:.0f} -> {w:.0f} -> {e:.0f}"
                for s, w, e in zip(result.rss_mb["start"], result.rss_mb["warm"], result.rss_mb["end"])
            ),
        ),
        (
            "RSS growth after warm-up / from start (MB, worst worker)",
            f"{result.rss_growth_after_warmup_mb:+.1f} / {result.rss_growth_from_start_mb:+.1f}",
        ),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bookrec.bench.load`."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=100_000, metavar="N", help="single-user recommend jobs to send (default: 100,000)"
    )
    parser.add_argument("--processes", type=int, default=2, metavar="P", help="worker processes (default: 2)")
    parser.add_argument(
        "--quick", action="store_true", help="the 5,000-user catalogue instead of the goodbooks-sized one"
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=11,
        metavar="N",
        help="Redis database of its own on BOOKREC_REDIS_URL's server (default: 11)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("var/bench"), metavar="DIR", help="catalogue cache (default: var/bench)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args(argv)
    notify: Notify = lambda message: print(f"load: {message}", file=sys.stderr, flush=True)  # noqa: E731

    size = catalogue.QUICK if args.quick else catalogue.FULL
    prepared = catalogue.prepare(size, args.cache_dir, catalogue.REAL_BOOKS, notify)
    if prepared.base_version is None:
        raise BookrecError(
            f"no cached base model for {size.describe()}; run `bookrec bench{' --quick' if args.quick else ''}` once to train it"
        )
    service = Service.claim(with_db(Settings.from_env().redis_url, args.redis_db), prepared.store, prepared.data_dir)
    pool = None
    try:
        redis_version = service.client.info("server").get("redis_version")
        promote(ModelStore(prepared.store), service.client, service.keys, prepared.base_version, reason="bench load")
        pool = Pool(service, args.processes, prepared.root / "logs" / "load-workers.log")
        pids = pool.wait_serving(prepared.base_version)
        users = _users(prepared)
        notify(f"{args.jobs:,} single-user jobs through {args.processes} worker processes (pids {pids})")
        result = run(service, pids, users, args.jobs, args.processes, notify=notify)
    finally:
        if pool is not None:
            pool.stop()
        service.release()
    details = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "catalogue": size.describe(),
        "model": f"{prepared.kind} {prepared.base_version}",
        "machine": machine.describe(redis_version),
    }
    print(
        markdown(result, details)
        if args.markdown
        else json.dumps({**details, **asdict(result), "ok": result.ok}, indent=2)
    )
    return 0 if result.failed == result.lost == 0 else 1


def _users(prepared: catalogue.Prepared) -> list[str]:
    """The catalogue's users in the model's order, shuffled with a fixed seed (so jobs do not run in id order)."""
    import numpy as np

    ids = ModelStore(prepared.store).metadata(prepared.base_version)["id_maps"]["users"]
    return [str(ids[i]) for i in np.random.default_rng(0).permutation(len(ids))]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BookrecError as exc:
        print(f"load: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
