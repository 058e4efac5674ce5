"""`bookrec bench`'s fresh phase: how soon a rating reaches the reader's cached list, what scoring from current
histories costs, and whether the workers' memory stays put while ratings flow (README: Benchmarks, "Fresh lists").

On the benchmark's catalogue and base model (in production), in this order:

- **In process** (one TensorFlow thread, like a worker; the real Redis): two disjoint random sets of
  `throughput_users` readers; those of the second are each given a delta of `delta_books` rated books and one
  removal, written as the ingest writes them. Batches of `batch` readers go through a job's work three ways: the
  first set by the index path (scored by user index, as rating-only kinds are and as this kind was before it scored
  histories, plus the cache write) and from their current histories (no delta: the delta read, scoring, the cache
  write), the second from their current histories with their deltas; passes interleaved, medians of `repeats`.
  Before that, one reader at a time of the second set through a fresh job's steps (claim, scoring, cache write).
- **Through the service**: 2 `bookrec worker` processes on recommend,fresh,refresh and one real `bookrec ingest` into
  a fresh SQLite store (WAL, in a temporary directory). Throughput: recommend jobs of `batch` readers with deltas,
  timed as the serving phase times them. Then the plain single-user recommend latency (`plain_requests` at
  `recommend_rate`/s, no ratings flowing), the reference. Then the event -> list latency: while rating events of
  other readers go in at `other_rate`/s and single-user recommends of yet others at `recommend_rate`/s, `probes`
  more readers each rate a book, `probe_rate` a second; a probe's time runs from just before its XADD until a poll
  (about every millisecond) finds the reader's cached entry with `ratings_through` at or past the event's id. The
  fresh jobs still queued and the readers still pending when the last probe is sent say whether the workers kept up
  (a backlog that grows makes the figure depend on how long the step runs). Each probe's time is split at the
  moment the reader's delta showed the event (the ingest's commit and acknowledging MULTI), and the fresh jobs
  that ran are summed up (readers per job, pickup and run time).
- **Memory**: the workers' RSS, then `memory_events` rating events XADDed as fast as the ingest takes them (at most
  BACKLOG waiting), until the ingest has acknowledged them all and no fresh job is queued or running; RSS again.
"""

from __future__ import annotations

import copy
import gc
import json
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import redis
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.bench import machine, measure
from bookrec.bench.catalogue import Prepared
from bookrec.bench.ratings_in import IngestProcess, rating_events
from bookrec.bench.service import Pool, Service
from bookrec.ingest.consumer import group_info
from bookrec.model_store.store import ModelStore
from bookrec.producer.client import Client
from bookrec.shared import delta
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_FRESH, SERVING_QUEUES
from bookrec.shared.ratings import StoredRating, stream_id_key
from bookrec.shared.redis_conn import text

QUEUES = ",".join(SERVING_QUEUES)
PROCESSES = 2
GORSE_CHECK_MS = 60_000.0
"""Gorse re-checks a user's cached list about once a minute (its default check period): the reference for the record."""
BACKLOG = 50_000  # the most events the memory step lets wait in the stream
PIPELINE = 1000  # XADDs per pipeline in the memory step
SLICE = 100_000  # events of the memory step made at a time (1,000,000 dicts would take a GB)
SEND_BURST = 1000  # the most events of other readers sent between two polls: a late poll catches up at once

Figures = dict[str, Any]
Notify = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How much the fresh phase does."""

    batch: int = 500  # readers per recommend job and per in-process batch
    n: int = 10
    throughput_users: int = 10_000  # readers given a delta, scored in each timed pass
    delta_books: int = 5  # rated books in each of their deltas (plus one removed)
    repeats: int = 3  # timed passes; the figure is the median
    single_readers: int = 200  # readers put one at a time through a fresh job's steps in process
    plain_requests: int = 500  # single-user recommends of the plain latency reference
    recommend_rate: float = 50.0  # single-user recommends/s, alone and under the rating load
    other_rate: float = 1000.0  # rating events/s of other readers under the probes
    probes: int = 500  # readers timed from their event to their list
    probe_rate: float = 10.0  # probes sent per second (each followed to its list, several in flight if slow)
    memory_events: int = 1_000_000
    timeout_s: float = 1800.0  # for one probe's list, a pass, or the memory step's events to go through


def run(service: Service, prepared: Prepared, base: str, plan: Plan, notify: Notify) -> tuple[Figures, Figures]:
    """Measure the three fresh-list figures with `base` in production; return (figures, references), keyed by figure."""
    rng = np.random.default_rng(0)
    in_process, readers, books = _in_process(service, ModelStore(prepared.store), base, plan, rng, notify)
    gc.collect()  # the in-process runtime, before the workers load theirs
    with tempfile.TemporaryDirectory(prefix="bookrec-bench-fresh-") as tmp:
        pool = Pool(service, PROCESSES, prepared.log("fresh-workers"), queues=QUEUES)
        ingest: IngestProcess | None = None
        try:
            pids = pool.wait_serving(base)
            ingest = IngestProcess(service, f"sqlite:///{Path(tmp) / 'ratings.db'}", prepared.log("fresh-ingest"))
            _wait_ready(service, ingest, plan.timeout_s)
            throughput = _throughput(service, pids, readers["delta"], plan, notify)
            plain = _plain_latency(service, readers["plain"], plan, notify)
            loaded = _loaded_latency(service, ingest, readers, books, plan, rng, notify)
            memory = _memory(service, prepared, ingest, pids, plan, notify)
        finally:
            if ingest is not None:
                ingest.stop()
            pool.stop()
    return _figures(in_process, throughput, plain, loaded, memory)


def _figures(
    in_process: Figures, throughput: Figures, plain: Figures, loaded: Figures, memory: Figures
) -> tuple[Figures, Figures]:
    """The three figures and their references from what the steps measured."""
    per_process = throughput["users_per_s"] / PROCESSES
    figures = {
        "fresh_list_ms": {"p50": loaded["p50"], "p99": loaded["p99"]},
        "history_throughput_users_per_s": {
            "per_process": per_process,
            "of_index": in_process["history_users_per_s"] / in_process["index_users_per_s"],
        },
        "fresh_worker_rss_mb": {"rss_mb": memory["rss_mb"], "growth_pct": memory["growth_pct"]},
    }
    references = {
        "fresh_list_ms": {
            **{k: v for k, v in loaded.items() if k not in ("p50", "p99")},
            "plain_recommend_ms": {"p50": plain["p50"], "p99": plain["p99"]},
            "gorse_check_ms": GORSE_CHECK_MS,
            "in_process_one_reader_ms": in_process["one_reader_ms"],
        },
        "history_throughput_users_per_s": {
            **{k: v for k, v in in_process.items() if k != "one_reader_ms"},
            "total_users_per_s": throughput["users_per_s"],
            "users_per_cpu_s": throughput["users_per_s"] / max(throughput["cores"], 1e-3),
            "processes": PROCESSES,
            "cores": throughput["cores"],
        },
        "fresh_worker_rss_mb": {k: v for k, v in memory.items() if k not in ("rss_mb", "growth_pct")},
    }
    return figures, references


# In process ---------------------------------------------------------------------------------


def _in_process(
    service: Service, store: ModelStore, base: str, plan: Plan, rng: np.random.Generator, notify: Notify
) -> tuple[Figures, dict[str, list[str]], list[str]]:
    """The in-process figures (see the module's docstring), the readers each later step uses (`_split_readers`), and
    the ids of the books the version knows."""
    from bookrec.worker.serve.runtime import ModelRuntime

    notify(f"fresh, in process: {plan.throughput_users:,} readers' job path by index, from histories, with deltas")
    runtime = ModelRuntime.load(store, base)
    users = [runtime.user_map.ids[i] for i in rng.permutation(len(runtime.user_map))]
    size = min(plan.throughput_users, len(users) // 3)
    plain, chosen = users[:size], users[size : 2 * size]  # the same number of readers, without and with deltas
    index = copy.copy(runtime)
    index.history_based = False  # the same version scored by user index, as rating-only kinds are
    client, keys, n = service.client, service.keys, plan.n

    def index_job(batch: list[str]) -> None:
        entries = index.recommend(batch, n).entries
        delta.write_lists(client, keys, [(u, e, 0) for u, e in zip(batch, entries)], n, None, "bench")

    def history_job(batch: list[str]) -> None:
        deltas = delta.read(client, keys, batch)
        entries = runtime.recommend(batch, n, deltas).entries
        delta.write_lists(client, keys, list(zip(batch, entries, (d.seq for d in deltas))), n, None, "bench")

    books = list(runtime.item_map.ids)
    _give_deltas(client, keys, chosen, books, plan, rng)
    one_reader = _one_reader(service, runtime, chosen[: plan.single_readers], n)  # while their lists are behind
    without, with_deltas = measure.batches(plain, plan.batch), measure.batches(chosen, plan.batch)
    runtime.recommend(without[0], n)  # warm
    rates: dict[str, list[float]] = {"index_users_per_s": [], "no_delta_users_per_s": [], "history_users_per_s": []}
    for _ in range(plan.repeats):  # interleaved, so a burst of someone else's load spoils all three alike
        rates["index_users_per_s"].append(_rate(index_job, without))
        rates["no_delta_users_per_s"].append(_rate(history_job, without))
        rates["history_users_per_s"].append(_rate(history_job, with_deltas))
    figures: Figures = {name: measure.median(values) for name, values in rates.items()}
    figures["read_ms_per_batch"] = measure.median(_ms(lambda b=b: delta.read(client, keys, b)) for b in with_deltas)
    figures.update(one_reader_ms=one_reader, delta_books=plan.delta_books, batch=plan.batch, readers=size)
    return figures, _split_readers(users[2 * size :], chosen, plan), books


def _rate(step: Callable[[list[str]], None], batches: list[list[str]]) -> float:
    """Readers per second of `step` over every batch, in one pass."""
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(map(len, batches)) / (time.perf_counter() - started)


def _ms(step: Callable[[], Any]) -> float:
    """Milliseconds one call of `step` takes."""
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1000


def _give_deltas(
    client: redis.Redis, keys, users: list[str], books: list[str], plan: Plan, rng: np.random.Generator
) -> None:
    """`plan.delta_books` rated books and one removed rating for each of `users`, written as the ingest writes them."""
    now = time.time()
    for batch in measure.batches(users, plan.batch):
        rows = [
            StoredRating(user, books[i], 4.0 if k < plan.delta_books else None, now, now)
            for user in batch
            for k, i in enumerate(rng.choice(len(books), plan.delta_books + 1, replace=False))
        ]
        delta.write(client, keys, rows, {user: f"{int(now * 1000)}-0" for user in batch})


def _one_reader(service: Service, runtime, users: list[str], n: int) -> dict[str, float]:
    """Medians (ms) of a fresh job's steps for one reader at a time: the claim (with the delta read), scoring, and
    the cache write, for `users` (each with a delta their list does not follow yet)."""
    client, keys = service.client, service.keys
    claim, score, write = [], [], []
    for user in users:
        job = uuid.uuid4().hex
        started = time.perf_counter()
        (found,) = delta.claim(client, keys, [user], job, 60_000)
        claimed = time.perf_counter()
        if found is None:
            raise BookrecError(f"reader {user} had no delta to claim: the benchmark's database is not its own")
        entry = runtime.recommend([user], n, [found]).entries[0]
        scored = time.perf_counter()
        delta.write_lists(client, keys, [(user, entry, found.seq)], n, None, job)
        written = time.perf_counter()
        claim.append(claimed - started)
        score.append(scored - claimed)
        write.append(written - scored)
    return {
        name: measure.median(times) * 1000 for name, times in (("claim", claim), ("score", score), ("write", write))
    }


def _split_readers(users: list[str], chosen: list[str], plan: Plan) -> dict[str, list[str]]:
    """The readers of each later step, disjoint: `delta` (`chosen`, the ones with deltas) for throughput, and from
    `users` the `probes`, `plain` and `stream` (single-user recommends alone and under load) and the `others` (the
    rating load)."""
    probes, rest = users[: plan.probes], users[plan.probes :]
    plain, rest = rest[: plan.plain_requests], rest[plan.plain_requests :]
    stream, others = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    return {"delta": chosen, "plain": plain, "probes": probes, "stream": stream, "others": others}


# Through the service ------------------------------------------------------------------------


def _wait_ready(service: Service, ingest: IngestProcess, timeout: float) -> None:
    """Wait until the ingest has created its consumer group (it is reading); BookrecError if it exits or is late."""
    deadline = time.perf_counter() + timeout
    while group_info(service.client, service.keys.ratings_stream) is None:
        ingest.check()
        if time.perf_counter() > deadline:
            raise BookrecError(f"bookrec ingest did not start within {timeout:.0f} s; see {ingest.log}")
        time.sleep(0.05)


def _throughput(service: Service, pids: list[int], readers: list[str], plan: Plan, notify: Notify) -> Figures:
    """Readers per second of recommend jobs of `plan.batch` readers with deltas on the workers `pids` (median of
    `repeats` passes after a warm-up), and the cores the workers had meanwhile."""
    notify(f"fresh, throughput: {PROCESSES} workers, {plan.repeats} passes of {len(readers):,} readers with deltas")
    timeout = 120 + len(readers) / 100
    measure.run_batches(service, readers[: plan.batch * PROCESSES * 2], plan.batch, plan.n, timeout)
    rates, cores = [], []
    for _ in range(plan.repeats):
        cpu = sum(machine.cpu_seconds(pid) for pid in pids)
        seconds = measure.run_batches(service, readers, plan.batch, plan.n, timeout)
        rates.append(len(readers) / seconds)
        cores.append((sum(machine.cpu_seconds(pid) for pid in pids) - cpu) / seconds)
    return {"users_per_s": measure.median(rates), "cores": measure.median(cores)}


def _plain_latency(service: Service, readers: list[str], plan: Plan, notify: Notify) -> Figures:
    """Single-user recommend latency with no ratings flowing (measure.latency_summary of the stream)."""
    notify(f"fresh, plain latency: {len(readers):,} single-user recommends at {plan.recommend_rate:.0f}/s")
    client = Client(settings=service.settings)
    samples = measure.RequestStream(client, plan.recommend_rate, plan.n).run(readers)
    return measure.latency_summary(samples, plan.repeats)


def _loaded_latency(
    service: Service,
    ingest: IngestProcess,
    readers: dict[str, list[str]],
    books: list[str],
    plan: Plan,
    rng: np.random.Generator,
    notify: Notify,
) -> Figures:
    """The event -> list latency of the probes under the rating load and the recommend stream (module docstring)."""
    notify(
        f"fresh, event -> list: {plan.probes:,} readers at {plan.probe_rate:g}/s, while {plan.other_rate:,.0f} "
        f"events/s of other readers and {plan.recommend_rate:.0f} single-user recommends/s flow"
    )
    load = _Load(service, ingest, readers["others"], readers["probes"], books, plan, rng)
    client = Client(settings=service.settings)
    samples = measure.RequestStream(client, plan.recommend_rate, plan.n).run(readers["stream"], load.tick)
    while not load.tick():  # the stream's readers ran out first (a small catalogue): finish the probes alone
        time.sleep(measure.POLL_S)
    stream = measure.latency_summary(samples, plan.repeats)
    return {
        **load.summary(),
        "stream_ms": {"p50": stream["p50"], "p99": stream["p99"]},
        "stream_requests": stream["requests"],
        "stream_lost": stream["lost"],
        "breakdown_ms": _breakdown(service, load.probes),
    }


@dataclass
class _Probe:
    """One probe: a reader's rating event and when (wall clock) it was sent, reached their delta and their list."""

    user: str
    stream_id: str
    sent: float
    ingested: float | None = None
    listed: float | None = None


@dataclass
class _Load:
    """What runs beside the recommend stream, one step per poll of it: rating events of `others` at `plan.other_rate`/s
    (at most SEND_BURST between two polls), and the probes (`_Probe`) at `plan.probe_rate`/s, each followed until its
    reader's list includes it (all those in flight polled in one round trip)."""

    service: Service
    ingest: IngestProcess
    others: list[str]
    readers: list[str]
    books: list[str]
    plan: Plan
    rng: np.random.Generator
    probes: list[_Probe] = field(default_factory=list)
    waiting: list[_Probe] = field(default_factory=list)
    sent: int = 0
    backlog: int = 0  # fresh jobs queued when the last probe was sent
    pending: int = 0  # readers in the pending set then
    start: float = field(default_factory=time.perf_counter)
    next_check: float = 0.0

    def tick(self) -> bool:
        """Send the events and the probe due, poll the probes in flight; True once every probe's list has appeared."""
        now = time.perf_counter()
        self._send_others(now)
        if len(self.probes) < len(self.readers) and now >= self.start + len(self.probes) / self.plan.probe_rate:
            self._send_probe()
        if self.waiting:
            self._poll()
        if now >= self.next_check:
            self.ingest.check()
            self.next_check = now + 0.5
        return len(self.probes) == len(self.readers) and not self.waiting

    def _send_others(self, now: float) -> None:
        due = min(int((now - self.start) * self.plan.other_rate), self.sent + SEND_BURST) - self.sent
        if due <= 0:
            return
        pipe = self.service.client.pipeline(transaction=False)
        for _ in range(due):
            fields = {
                "user_id": self.others[int(self.rng.integers(len(self.others)))],
                "book_id": self.books[int(self.rng.integers(len(self.books)))],
                "rating": str(int(self.rng.integers(1, 6))),
            }
            pipe.xadd(self.service.keys.ratings_stream, fields)
        pipe.execute()
        self.sent += due

    def _send_probe(self) -> None:
        user = self.readers[len(self.probes)]
        fields = {"user_id": user, "book_id": self.books[int(self.rng.integers(len(self.books)))], "rating": "5"}
        sent = time.time()
        probe = _Probe(user, text(self.service.client.xadd(self.service.keys.ratings_stream, fields)), sent)
        self.probes.append(probe)
        self.waiting.append(probe)
        if len(self.probes) == len(self.readers):
            self.backlog = self.service.queue(QUEUE_FRESH).count
            self.pending = self.service.client.zcard(self.service.keys.fresh_pending)

    def _poll(self) -> None:
        """One round trip: each waiting probe's reader's delta's newest stream id and their cached entry."""
        keys = self.service.keys
        pipe = self.service.client.pipeline(transaction=False)
        for probe in self.waiting:
            pipe.hget(keys.delta(probe.user), "*through")
            pipe.get(keys.recs(probe.user))
        replies = pipe.execute()
        now = time.time()
        for probe, through, raw in zip(self.waiting, replies[::2], replies[1::2]):
            wanted = stream_id_key(probe.stream_id)
            if probe.ingested is None and through is not None and stream_id_key(text(through)) >= wanted:
                probe.ingested = now
            listed = None if raw is None else json.loads(raw).get("ratings_through")
            if listed is not None and stream_id_key(listed) >= wanted:
                probe.listed, probe.ingested = now, probe.ingested or now
            elif now - probe.sent > self.plan.timeout_s:
                raise BookrecError(
                    f"reader {probe.user}'s list did not include their rating {probe.stream_id} within "
                    f"{self.plan.timeout_s:.0f} s; see the ingest and worker logs"
                )
        self.waiting = [probe for probe in self.waiting if probe.listed is None]

    def summary(self) -> Figures:
        """The probes' latency (ms) and what the load really was."""
        ms = np.array([(p.listed - p.sent) * 1000 for p in self.probes])
        seconds = time.perf_counter() - self.start
        return {
            "p50": measure.percentile(ms, 50),
            "p99": measure.percentile(ms, 99),
            "max_ms": float(ms.max()),
            "probes": len(self.probes),
            "probe_rate": self.plan.probe_rate,
            "other_events_per_s": self.sent / seconds,
            "seconds": seconds,
            "fresh_backlog_jobs": self.backlog,
            "pending_readers": self.pending,
        }


def _breakdown(service: Service, probes: list[_Probe]) -> Figures:
    """Medians (ms) of where each probe's time went, from the polls: sent -> the reader's delta showed the event
    (the ingest read, parsed and committed it, and ran the acknowledging MULTI that also pends the reader), and
    -> the list appeared (a fresh job woken or already queued, picked up, took the reader, scored, cached). Also the
    fresh jobs that ran: how many, readers per job, pickup (RQ's enqueued -> started) and run time."""
    ingest = [p.ingested - p.sent for p in probes if p.ingested is not None and p.listed is not None]
    recompute = [p.listed - p.ingested for p in probes if p.ingested is not None and p.listed is not None]
    jobs = _fresh_jobs(service)
    results = [job.return_value() or {} for job in jobs]
    pickup = [_epoch(j.started_at) - _epoch(j.enqueued_at) for j in jobs if j.started_at and j.enqueued_at]
    readers = [r["users"] for r in results if "users" in r]
    run = [r["seconds"] for r in results if "seconds" in r]
    return {
        "ingest": measure.median(ingest) * 1000 if ingest else None,
        "recompute": measure.median(recompute) * 1000 if recompute else None,
        "probes_split": len(ingest),
        "fresh_jobs": len(jobs),
        "readers_per_job": measure.median(readers) if readers else None,
        "pickup_p50": measure.median(pickup) * 1000 if pickup else None,
        "pickup_p99": measure.percentile(pickup, 99) * 1000 if pickup else None,
        "run_p50": measure.median(run) * 1000 if run else None,
    }


def _fresh_jobs(service: Service) -> list[Job]:
    """Every fresh job finished so far (the phase's database held none before its rating load)."""
    registry = FinishedJobRegistry(service.keys.queue(QUEUE_FRESH), connection=service.client)
    ids = registry.get_job_ids()
    jobs: list[Job] = []
    for first in range(0, len(ids), 1000):
        fetched = Job.fetch_many(ids[first : first + 1000], connection=service.client, serializer=JSONSerializer)
        jobs += [job for job in fetched if job is not None]
    return jobs


def _epoch(moment: datetime) -> float:
    """Epoch seconds of one of RQ's timestamps (UTC, naive or not)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# Memory -------------------------------------------------------------------------------------


def _memory(
    service: Service, prepared: Prepared, ingest: IngestProcess, pids: list[int], plan: Plan, notify: Notify
) -> Figures:
    """The workers' RSS before and after `plan.memory_events` rating events went through the ingest and the fresh
    recomputes they caused; growth in % of the larger process's (the worst of the two)."""
    notify(f"fresh, memory: {plan.memory_events:,} rating events through the ingest and the fresh recomputes")
    before, jobs, redis_mb = machine.rss_by_pid(pids), service.jobs_done(), _redis_mb(service)
    started = time.perf_counter()
    last, trajectory = _send_all(service, prepared, ingest, pids, plan)
    _drain(service, ingest, last, started + plan.timeout_s)
    seconds = time.perf_counter() - started
    after = machine.rss_by_pid(pids)
    return {
        "rss_mb": max(after.values()),
        "growth_pct": max((after[pid] - before[pid]) / before[pid] * 100 for pid in pids),
        "rss_before_mb": list(before.values()),
        "rss_after_mb": list(after.values()),
        "rss_while_sending_mb": trajectory,
        "events": plan.memory_events,
        "seconds": seconds,
        "events_per_s": plan.memory_events / seconds,
        "jobs": service.jobs_done() - jobs,
        "redis_growth_mb": _redis_mb(service) - redis_mb,
    }


def _send_all(
    service: Service, prepared: Prepared, ingest: IngestProcess, pids: list[int], plan: Plan
) -> tuple[str, list[float]]:
    """XADD the memory step's events in pipelines, never more than BACKLOG ahead of the ingest, a SLICE at a time;
    the last one's id, and the larger worker RSS (MB) after each slice was sent."""
    client, stream = service.client, service.keys.ratings_stream
    deadline = time.perf_counter() + plan.timeout_s
    last, trajectory = "", []
    for first in range(0, plan.memory_events, SLICE):
        events = rating_events(prepared, min(SLICE, plan.memory_events - first), seed=2 + first)
        for start in range(0, len(events), PIPELINE):
            while client.xlen(stream) > BACKLOG:
                _wait(ingest, deadline, "keep up with the memory step's events")
            pipe = client.pipeline(transaction=False)
            for fields in events[start : start + PIPELINE]:
                pipe.xadd(stream, fields)
            last = text(pipe.execute()[-1])
        trajectory.append(max(machine.rss_by_pid(pids).values()))
    return last, trajectory


def _drain(service: Service, ingest: IngestProcess, last: str, deadline: float) -> None:
    """Wait until the ingest has acknowledged every entry up to `last`, no reader is pending and no fresh job is
    queued or running."""
    client = service.client
    queue = service.queue(QUEUE_FRESH)
    started = StartedJobRegistry(queue.name, connection=client, serializer=JSONSerializer)
    while True:
        group = group_info(client, service.keys.ratings_stream)
        drained = group is not None and text(group["last-delivered-id"]) == last and group["pending"] == 0
        # A popped job sits in RQ's intermediate list until its worker has put it in the started registry.
        idle = queue.count == 0 and client.llen(queue.intermediate_queue_key) == 0
        idle = idle and client.zcard(service.keys.fresh_pending) == 0
        if drained and idle and started.get_job_count(cleanup=False) == 0:
            return
        _wait(ingest, deadline, "take every event and its fresh jobs")


def _wait(ingest: IngestProcess, deadline: float, what: str) -> None:
    """Sleep a little; BookrecError if the ingest died or `deadline` (perf_counter time) passed."""
    ingest.check()
    if time.perf_counter() > deadline:
        raise BookrecError(f"the service did not {what} in time; see {ingest.log} and the worker log")
    time.sleep(0.05)


def _redis_mb(service: Service) -> float:
    """Memory Redis uses (all databases), MB."""
    return service.client.info("memory")["used_memory"] / 2**20
