"""Each measurement the benchmark makes, on the in-process runtime or through the real service.

Service measurements enqueue jobs the way `bookrec.producer.Client` does (JSON serializer, same timeout,
retry and result TTL) and time them from the client: a batch is done when the users it counted
into a `refresh:{id}:done` counter (the `refresh_id` job argument) add up; a single request is
done when its user's cache entry appears.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
from rq.registry import FailedJobRegistry

from bookrec.bench.service import Service
from bookrec.producer.client import Client
from bookrec.shared import jobs
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_RECOMMEND

if TYPE_CHECKING:  # imports TensorFlow, which the ratings-in phase does without
    from bookrec.worker.serve.runtime import ModelRuntime

POLL_S = 0.0005


def median(values: Iterable[float]) -> float:
    """The median of `values` as a float."""
    return float(np.median(list(values)))


def percentile(values: Iterable[float], q: float) -> float:
    """The `q`th percentile (0..100) of `values` as a float."""
    return float(np.percentile(list(values), q))


def batches(users: list[str], size: int) -> list[list[str]]:
    """`users` in consecutive lists of at most `size`."""
    return [users[i : i + size] for i in range(0, len(users), size)]


# In process ---------------------------------------------------------------------------------


def ceiling(runtime: ModelRuntime, users: list[str], batch: int, n: int, repeats: int) -> dict[str, float]:
    """Users/s of `ModelRuntime.recommend` (batched scoring, seen filter, top-k, entry JSON), no queue, no Redis.

    Returns medians over `repeats` passes over `users`: users per second and per CPU-second of
    this process, the same for the `recommend` signature alone (the graph call, no Python
    around it), and one user's time in ms.
    """
    chunks = batches(users, batch)
    inputs = []
    for chunk in chunks:
        rows, items = runtime.seen.rows(runtime.seen_users.index(chunk))
        inputs.append((runtime.user_map.index(chunk), rows.astype(np.int32), items))
    full, cpu, graph = [], [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        for chunk in chunks:
            runtime.recommend(chunk, n)
        full.append(len(users) / (time.perf_counter() - started))
        cpu.append(len(users) / (time.process_time() - cpu_started))
        started = time.perf_counter()
        for user_idx, rows, items in inputs:
            result = runtime.module.recommend(user=user_idx, k=np.int32(n), exclude_row=rows, exclude_item=items)
            result["items"].numpy()
        graph.append(len(users) / (time.perf_counter() - started))
    single = []
    for user in users[: min(len(users), 200)]:
        started = time.perf_counter()
        runtime.recommend([user], n)
        single.append((time.perf_counter() - started) * 1000)
    return {
        "users_per_s": median(full),
        "users_per_cpu_s": median(cpu),
        "graph_users_per_s": median(graph),
        "single_user_ms": median(single),
    }


def model_load_s(store, version: str, repeats: int) -> float:
    """Median seconds to load, verify and warm up one version in this process (what a hot swap does)."""
    from bookrec.worker.serve.runtime import ModelRuntime

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ModelRuntime.load(store, version)
        times.append(time.perf_counter() - started)
    return median(times)


# Through the service ------------------------------------------------------------------------


def run_batches(service: Service, users: list[str], batch: int, n: int, timeout: float) -> float:
    """Seconds from enqueueing `users` in recommend jobs of `batch` users until every entry is cached."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    specs = [
        jobs.recommend({"user_ids": chunk, "n": n, "refresh_id": tag}, service.settings)
        for chunk in batches(users, batch)
    ]
    started = time.perf_counter()
    queue = service.queue(QUEUE_RECOMMEND)
    for first in range(0, len(specs), 500):
        queue.enqueue_many(specs[first : first + 500])
    wait_count(service, service.keys.refresh_done(tag), len(users), started + timeout)
    return time.perf_counter() - started


def wait_count(service: Service, key: str, total: int, deadline: float) -> None:
    """Poll counter `key` until it reaches `total`; BookrecError at `deadline` (perf_counter time) or on a failed job."""
    next_check = time.perf_counter() + 0.5
    while True:
        done = int(service.client.get(key) or 0)
        if done >= total:
            return
        now = time.perf_counter()
        if now > deadline:
            raise BookrecError(f"only {done} of {total} users were served before the deadline; see the worker logs")
        if now > next_check:
            if failed_jobs(service):
                raise BookrecError(
                    f"{failed_jobs(service)} recommend jobs failed during the benchmark; see the worker logs"
                )
            next_check = now + 0.5
        time.sleep(0.002)


def full_refresh(client: Client, total: int, timeout: float) -> float:
    """Seconds from enqueueing a refresh of every user (the real `refresh` job) until all are cached."""
    started = time.perf_counter()
    job = client.refresh()
    while True:
        progress = client.refresh_progress(job)
        if progress is not None and progress[0] >= total:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise BookrecError(f"the refresh did not finish within {timeout:.0f} s (progress {progress})")
        time.sleep(0.002)


def cache_reads(client: Client, users: list[str]) -> dict[str, float]:
    """Median ms of `Client.get` (GET + JSON decode of one entry) over `users`, a Redis PING beside it, and the
    entries' mean size: their JSON bytes and what Redis holds for each (`MEMORY USAGE`, key and overhead included)."""
    reads, pings, sizes, held = [], [], [], []
    for user in users:
        started = time.perf_counter()
        if client.get(user) is None:
            raise BookrecError(f"user {user} has no cached entry to read")
        reads.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.redis.ping()
        pings.append(time.perf_counter() - started)
        key = client.keys.recs(user)
        sizes.append(client.redis.strlen(key))
        held.append(client.redis.memory_usage(key, samples=0))
    return {
        "p50_ms": median(reads) * 1000,
        "ping_p50_ms": median(pings) * 1000,
        "entry_bytes": float(np.mean(sizes)),
        "redis_bytes_per_entry": float(np.mean(held)),
    }


def failed_jobs(service: Service) -> int:
    """Jobs in the recommend queue's failed registry."""
    return FailedJobRegistry(service.keys.queue(QUEUE_RECOMMEND), connection=service.client).get_job_count(
        cleanup=False
    )


@dataclass
class Sample:
    """One single-user request: when it was sent, how long until its entry was cached, what served it."""

    sent: float  # perf_counter time of the enqueue call
    latency_s: float | None  # None: no entry within the stream's timeout
    server_s: float | None = None  # enqueue -> the entry's generated_at (wall clock)
    version: str | None = None


@dataclass
class RequestStream:
    """Single-user recommend requests sent at a steady rate through `Client.recommend`, each timed to its cached entry.

    One thread sends and polls: every ~0.5 ms it sends what is due and MGETs the pending users'
    keys (deleted beforehand), so a latency is known to within about a millisecond.
    """

    client: Client
    rate: float
    n: int = 10
    timeout_s: float = 10.0
    samples: list[Sample] = field(default_factory=list)

    def run(self, users: list[str], tick: Callable[[], bool] | None = None) -> list[Sample]:
        """Send one request per user in `users` (distinct ids) at `rate`/s, then wait for the answers.

        `tick` is called on every poll; once it returns True no more requests are sent.
        """
        keys = {user: self.client.keys.recs(user) for user in users}
        for chunk in batches(list(keys.values()), 1000):
            self.client.redis.delete(*chunk)
        pending: dict[str, tuple[float, float]] = {}
        start = time.perf_counter()
        sent, stopped = 0, False
        while (sent < len(users) and not stopped) or pending:
            now = time.perf_counter()
            if sent < len(users) and not stopped and now >= start + sent / self.rate:
                user = users[sent]
                pending[user] = (time.perf_counter(), time.time())
                self.client.recommend([user], self.n)
                sent += 1
            if pending:
                self._collect(pending, keys)
            if tick is not None:
                stopped = tick() or stopped
            time.sleep(POLL_S)
        return self.samples

    def _collect(self, pending: dict[str, tuple[float, float]], keys: dict[str, str]) -> None:
        waiting = list(pending)
        values = self.client.redis.mget([keys[user] for user in waiting])
        now = time.perf_counter()
        for user, raw in zip(waiting, values):
            sent, wall = pending[user]
            if raw is not None:
                self.samples.append(_sample(sent, now - sent, wall, raw))
                del pending[user]
            elif now - sent > self.timeout_s:
                self.samples.append(Sample(sent, None))
                del pending[user]


def _sample(sent: float, latency: float, sent_wall: float, raw: bytes) -> Sample:
    entry = json.loads(raw)
    generated = datetime.strptime(entry["generated_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return Sample(sent, latency, generated.timestamp() - sent_wall, entry["model_version"])


def latency_summary(samples: list[Sample], runs: int) -> dict[str, float]:
    """Latency (ms) of single-user requests, enqueue to cached entry as the client sees it.

    p50 and p99 are medians over `runs` consecutive runs of the stream (a burst of someone
    else's load on a shared machine then spoils one run, not the figure); `all_p50`/`all_p99`
    pool every request. Also enqueue -> the entry's generated_at, the slowest, and lost requests.
    """
    answered = sorted((s for s in samples if s.latency_s is not None), key=lambda s: s.sent)
    if not answered:
        raise BookrecError("no request of the latency stream was answered; see the worker logs")
    seen = np.array([s.latency_s for s in answered]) * 1000
    server = np.array([s.server_s for s in answered]) * 1000
    parts = [part for part in np.array_split(np.arange(len(answered)), runs) if len(part)]

    def per_run(values: np.ndarray, q: float) -> float:
        return median(percentile(values[part], q) for part in parts)

    return {
        "p50": per_run(seen, 50),
        "p99": per_run(seen, 99),
        "all_p50": percentile(seen, 50),
        "all_p99": percentile(seen, 99),
        "server_p50": per_run(server, 50),
        "server_p99": per_run(server, 99),
        "max": float(seen.max()),
        "runs": len(parts),
        "requests": len(samples),
        "lost": len(samples) - len(answered),
    }
