"""`bookrec bench`: run every measurement in order on one catalogue and return a `Report`.

Three phases, `serving`, `ratings` and `fresh` (a run may do one of them). Serving, in this order so that its
steps do not disturb each other: a trainer worker first (all cores: it trains the base model if
none is cached, then the timed retrain), then in-process figures (ceiling, model load, seed path),
then one serving process (throughput), then two (throughput, full refresh, cache reads, latency,
memory over a soak of jobs, and last a hot swap to the retrained version under a stream of
requests). Ratings in (`ratings_in.py`, no TensorFlow): real `bookrec ingest` processes into
SQLite and PostgreSQL, then bulk import and snapshots. Fresh (`fresh_lists.py`), on an emptied Redis database
with the base version in production: scoring from current histories in process and on two serving processes,
a rating event to the reader's recomputed list under a rating load, and the workers' memory over 1,000,000
ingested ratings. At the end the benchmark's Redis database is flushed, its PostgreSQL databases are dropped and
its model store holds only the base version, in production.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bookrec.bench import PHASES, catalogue, fresh_lists, machine, measure, ratings_in
from bookrec.bench.catalogue import Data, Notify, Prepared, Size
from bookrec.bench.figures import Report
from bookrec.bench.service import Pool, Service
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_REFRESH
from bookrec.shared.payloads import RATINGS_FILE

ISSUE_CEILING_REFERENCE = 18_000  # users/s: in-graph top-k over 10,000 items, 32-dim embeddings, on this machine


@dataclass(frozen=True)
class Config:
    """What to run and how much of it."""

    size: Size
    redis_url: str
    cache_root: Path = Path("var/bench")
    books_from: Path | None = None
    quick: bool = False
    model: str | None = None  # the kind of the base model; None: the default kind
    model_params: dict[str, Any] = field(default_factory=dict)  # overrides of that kind's parameters
    batch: int = 500  # users per recommend job
    n: int = 10
    repeats: int = 3  # of each timed pass; the figure is the median
    ceiling_users: int = 10_000  # users per in-process pass
    throughput_users: int = 30_000  # users per timed service pass
    latency_requests: int = 2000
    rate: float = 50.0  # single-user requests per second
    cache_reads: int = 2000
    seed_users: int = 5
    soak_passes: int = 3  # passes over the whole catalogue in jobs of `batch` users, for memory growth
    soak_single_jobs: int = 45_000  # and this many single-user jobs: with the phases before, ~50,000 jobs
    swap_lead_s: float = 2.0  # requests before the promotion, and again after every worker swapped
    swap_timeout_s: float = 30.0
    phases: tuple[str, ...] = PHASES
    ratings: ratings_in.Plan = field(default_factory=ratings_in.Plan)
    fresh: fresh_lists.Plan = field(default_factory=fresh_lists.Plan)

    @classmethod
    def full(cls, redis_url: str, cache_root: Path, books_from: Path | None) -> "Config":
        """The goodbooks-sized run (under 15 minutes once the catalogue and base model are cached)."""
        return cls(catalogue.FULL, redis_url, cache_root, books_from)

    @classmethod
    def quick_run(cls, redis_url: str, cache_root: Path, books_from: Path | None) -> "Config":
        """A smaller catalogue and fewer requests (under 2 minutes once cached)."""
        return cls(
            catalogue.QUICK,
            redis_url,
            cache_root,
            books_from,
            quick=True,
            ceiling_users=5000,
            throughput_users=20_000,
            latency_requests=300,
            cache_reads=500,
            seed_users=3,
            soak_passes=2,
            soak_single_jobs=2000,
            swap_lead_s=1.0,
            ratings=ratings_in.Plan(events=20_000, latency_s=3.0),
            fresh=fresh_lists.Plan(
                throughput_users=2000, single_readers=100, plain_requests=200, probes=200, memory_events=100_000
            ),
        )


@dataclass
class _Run:
    """State shared by the phases of one run."""

    config: Config
    prepared: Prepared | Data  # a Prepared (with the base model) when the serving phase runs
    notify: Notify
    base: str = ""
    users: list[str] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    figures: dict[str, Any] = field(default_factory=dict)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def sample(self, count: int) -> list[str]:
        """`count` distinct users (all of them if there are fewer), in random order."""
        return [self.users[i] for i in self.rng.permutation(len(self.users))[: min(count, len(self.users))]]

    def cycle(self, count: int) -> list[str]:
        """`count` users in random order, every user once per round (a pass longer than the catalogue repeats users)."""
        rounds = -(-count // len(self.users))
        order = np.concatenate([self.rng.permutation(len(self.users)) for _ in range(rounds)])[:count]
        return [self.users[i] for i in order]

    def timeout(self) -> float:
        """Seconds to allow one pass over the catalogue before calling it stuck."""
        return 120 + len(self.users) / 100


def run(config: Config, notify: Notify = lambda message: None) -> Report:
    """Run the benchmark's phases (`config.phases`); `notify` hears about each step as it starts."""
    unknown = set(config.phases) - set(PHASES)
    if unknown or not config.phases:
        raise BookrecError(f"benchmark phases {sorted(unknown)} unknown; choose from {', '.join(PHASES)}")
    meter = machine.CpuMeter.start()
    other_at_start = machine.idle_load()
    databases = ratings_in.Databases(config.ratings.postgres_url) if "ratings" in config.phases else None
    try:
        state = _Run(config, _prepare(config, notify), notify)
        started = time.monotonic()
        service = Service.claim(config.redis_url, state.prepared.root / "models", state.prepared.data_dir)
        try:
            redis_version = service.client.info("server").get("redis_version")
            if "serving" in config.phases:
                _service_phases(state, service)
            if databases is not None:
                figures, references = ratings_in.run(service, state.prepared, config.ratings, databases, notify)
                state.figures.update(figures)
                state.references.update(references)
                state.details["postgres_server"] = databases.server_version
            if "fresh" in config.phases:
                _fresh_phase(state, service)
        finally:
            _clean_up(service, state)
    finally:
        if databases is not None:
            databases.drop_all()
    info = machine.describe(redis_version)
    info.update(
        other_cores_at_start=round(other_at_start, 2), other_cores_during_run=round(meter.cores_used_by_others(), 2)
    )
    info["busy"] = max(info["other_cores_at_start"], info["other_cores_during_run"]) > machine.BUSY_CORES
    state.details.update(
        quick=config.quick,
        phases=list(config.phases),
        catalogue=state.prepared.size.describe(),
        catalogue_generated=state.prepared.generated,
        cache_dir=str(state.prepared.root),
        seconds=round(time.monotonic() - started, 1),
    )
    if isinstance(state.prepared, Prepared):
        dim = f" dim={state.prepared.params['dim']}" if "dim" in state.prepared.params else ""
        state.details.update(
            base_model_trained=state.prepared.base_version is None,
            model=f"{state.prepared.kind}{dim}",
            model_params=state.prepared.params,
        )
    return Report(info, state.figures, state.references, state.details)


def _prepare(config: Config, notify: Notify) -> Prepared | Data:
    """The catalogue, with its cached base model when the serving or fresh phase runs (TensorFlow is imported only
    then)."""
    if not {"serving", "fresh"} & set(config.phases):
        return catalogue.prepare_data(config.size, config.cache_root, config.books_from, notify)
    from bookrec.worker.serve.tf_setup import configure_tensorflow

    configure_tensorflow(1)  # the same single TensorFlow thread as each worker process
    return catalogue.prepare(
        config.size, config.cache_root, config.books_from, notify, config.model_params, config.model
    )


def _service_phases(state: _Run, service: Service) -> None:
    from bookrec.producer.client import Client

    client = Client(settings=service.settings)
    candidate = _train(state, service, client)
    _in_process(state)
    one = _throughput(state, service, 1)
    pool = Pool(service, 2, state.prepared.log("workers-2"))
    try:
        pids = pool.wait_serving(state.base)
        two = _passes(state, service, pids)
        _record_throughput(state, one, two)
        _refresh_and_reads(state, client)
        baseline = machine.rss_by_pid(pids), service.jobs_done()
        _latency(state, client)
        _soak(state, service)
        _record_memory(state, service, pids, baseline)
        _swap(state, service, client, candidate)
    finally:
        pool.stop()


def _train(state: _Run, service: Service, client) -> str:
    """On a real trainer worker (all cores): the base version (`_base`), then a timed retrain; return its version.

    The catalogue is the one the base was trained on, and a retrain without new ratings trains nothing
    unless forced; so the timed retrain is forced (it still evaluates production for the gate), and the
    base is put back in production at once: the benchmark promotes the candidate itself, later, under load.
    """
    from bookrec.model_store.promotion import promote
    from bookrec.model_store.store import ModelStore

    trainer = _trainer(state, service)
    try:
        _base(state, service, client)
        state.notify("retrain: one retrain job on a `bookrec worker --queues retrain` process (BOOKREC_TF_THREADS=0)")
        started = time.perf_counter()
        result = _retrain(state, client)
        seconds = time.perf_counter() - started
        promote(ModelStore(state.prepared.store), service.client, service.keys, state.base, reason="bench base")
        service.queue(QUEUE_REFRESH).empty()  # the refreshes both promotions enqueued: no worker serves yet
    finally:
        trainer.stop()
    state.figures["retrain_s"] = seconds
    state.references["retrain_s"] = {"fit_s": result["seconds"], "kind": result["model"]}
    return result["version"]


def _retrain(state: _Run, client) -> dict[str, Any]:
    """One retrain job of the run's kind and parameters on the catalogue's ratings.csv, past the gate, waited for."""
    return client.retrain(
        model=state.prepared.kind,
        params=state.config.model_params,
        ratings=RATINGS_FILE,
        force=True,
        wait=True,
        timeout=3600,
    )


def _trainer(state: _Run, service: Service) -> Pool:
    """A `bookrec worker --queues retrain` process (BOOKREC_TF_THREADS=0: all cores), listening."""
    trainer = Pool(service, 1, state.prepared.log("trainer"), queues="retrain", tf_threads=0)
    try:
        trainer.wait_listening()
    except BaseException:
        trainer.stop()
        raise
    return trainer


def _base(state: _Run, service: Service, client) -> None:
    """Put the base version in production: the cached one, or one trained now by a retrain job (a trainer must be
    listening then, see `_trainer`), cached for later runs. It is trained from the catalogue's ratings.csv: the
    benchmark fills no ratings store for it."""
    from bookrec.model_store.promotion import promote
    from bookrec.model_store.store import ModelStore

    prepared = state.prepared
    state.base = prepared.base_version or state.base
    if not state.base:
        state.notify(
            f"training the base model ({prepared.kind}) with a retrain job into {prepared.store} (cached for later runs)"
        )
        state.base = _retrain(state, client)["version"]
        service.queue(QUEUE_REFRESH).empty()  # the refresh its promotion enqueued: no worker serves yet
    promote(ModelStore(prepared.store), service.client, service.keys, state.base, reason="bench base")


def _fresh_phase(state: _Run, service: Service) -> None:
    """The fresh phase on an emptied database with the base version in production (trained first if none is)."""
    from bookrec.producer.client import Client

    service.reset()  # no list, queue, stream or worker of an earlier phase
    client = Client(settings=service.settings)
    if state.prepared.base_version or state.base:
        _base(state, service, client)
    else:
        trainer = _trainer(state, service)
        try:
            _base(state, service, client)
        finally:
            trainer.stop()
    figures, references = fresh_lists.run(service, state.prepared, state.base, state.config.fresh, state.notify)
    state.figures.update(figures)
    state.references.update(references)


def _in_process(state: _Run) -> None:
    """Ceiling, model load time and the seed path, in this process while no worker runs."""
    from bookrec.bench import seed_path
    from bookrec.model_store.store import ModelStore
    from bookrec.worker.learn import artifacts
    from bookrec.worker.serve.runtime import ModelRuntime

    config = state.config
    store = ModelStore(state.prepared.store)
    state.notify("in-process: loading the model, measuring the ceiling, the model load time and the seed path")
    rss_before = machine.rss_mb(os.getpid())
    runtime = ModelRuntime.load(store, state.base)
    state.details["load_mb"] = machine.rss_mb(os.getpid()) - rss_before
    state.users = runtime.user_map.to_list()
    ceiling = measure.ceiling(runtime, state.sample(config.ceiling_users), config.batch, config.n, config.repeats)
    state.figures["ceiling_users_per_s"] = ceiling["users_per_s"]
    state.references["ceiling_users_per_s"] = {
        "graph_users_per_s": ceiling["graph_users_per_s"],
        "users_per_cpu_s": ceiling["users_per_cpu_s"],
        "issue_reference_users_per_s": ISSUE_CEILING_REFERENCE,
    }
    state.details["in_process_single_user_ms"] = ceiling["single_user_ms"]
    state.details["model_load_s"] = measure.model_load_s(store, state.base, 2)
    if seed_path.applies(runtime):
        _seed_path(state, runtime, artifacts.read(store.root / state.base).books, ceiling["users_per_s"])
    del runtime
    gc.collect()


def _seed_path(state: _Run, runtime, books: list[dict], users_per_s: float) -> None:
    """The seed notebook's way of scoring a few users, beside ours in-process."""
    from bookrec.bench import seed_path

    seed = seed_path.measure(runtime, books, state.sample(state.config.seed_users), state.config.n)
    state.figures["seed_path_ms_per_user"] = seed["ms_per_user"]
    ours = 1000 / users_per_s
    state.references["seed_path_ms_per_user"] = {
        "service_ms_per_user": ours,
        "speedup": seed["ms_per_user"] / ours,
        "same_top_n": seed["same_top_n"],
        "users": seed["users"],
    }


def _throughput(state: _Run, service: Service, processes: int) -> list[dict[str, float]]:
    """Each timed pass on a fresh pool of `processes` workers (see `_passes`)."""
    pool = Pool(service, processes, state.prepared.log(f"workers-{processes}"))
    try:
        return _passes(state, service, pool.wait_serving(state.base))
    finally:
        pool.stop()


def _passes(state: _Run, service: Service, pids: list[int]) -> list[dict[str, float]]:
    """One untimed warm-up pass, then `repeats` timed passes of jobs of `batch` users: users/s and users per worker CPU-s."""
    config = state.config
    state.notify(
        f"throughput: {len(pids)} worker process(es), {config.repeats} passes of "
        f"{config.throughput_users:,} users in jobs of {config.batch}"
    )
    measure.run_batches(service, state.sample(config.batch * len(pids) * 2), config.batch, config.n, state.timeout())
    passes = []
    for _ in range(config.repeats):
        users = state.cycle(config.throughput_users)
        cpu = sum(machine.cpu_seconds(pid) for pid in pids)
        seconds = measure.run_batches(service, users, config.batch, config.n, state.timeout())
        cpu = sum(machine.cpu_seconds(pid) for pid in pids) - cpu
        passes.append({"users_per_s": len(users) / seconds, "users_per_cpu_s": len(users) / max(cpu, 1e-3)})
    return passes


def _record_throughput(state: _Run, one: list[dict[str, float]], two: list[dict[str, float]]) -> None:
    total = measure.median(p["users_per_s"] for p in two)
    alone = measure.median(p["users_per_s"] for p in one)
    ceiling = state.figures["ceiling_users_per_s"]
    per_cpu = measure.median(p["users_per_cpu_s"] for p in two)
    state.figures["throughput_users_per_s"] = total / 2
    state.figures["scaling_2_vs_1"] = total / alone
    state.references["throughput_users_per_s"] = {
        "ceiling_users_per_s": ceiling,
        "ratio_of_ceiling": total / 2 / ceiling,
        "total_users_per_s": total,
        "processes": 2,
        "users_per_cpu_s": per_cpu,
        "cpu_ratio_of_ceiling": per_cpu / state.references["ceiling_users_per_s"]["users_per_cpu_s"],
        "passes": two,
    }
    state.references["scaling_2_vs_1"] = {
        "one_process_users_per_s": alone,
        "two_processes_users_per_s": total,
        "one_process_cores": _cores(one),
        "two_processes_cores": _cores(two),
        "one_process_passes": one,
    }


def _cores(passes: list[dict[str, float]]) -> float:
    """How many cores the workers had during their passes (median): users per second over users per CPU-second."""
    return measure.median(p["users_per_s"] / p["users_per_cpu_s"] for p in passes)


def _refresh_and_reads(state: _Run, client) -> None:
    config = state.config
    state.notify(f"full refresh: {config.repeats} refreshes of all {len(state.users):,} users")
    times = [measure.full_refresh(client, len(state.users), state.timeout()) for _ in range(config.repeats)]
    state.figures["full_refresh_s"] = measure.median(times)
    state.references["full_refresh_s"] = {
        "users": len(state.users),
        "runs": times,
        "ideal_s": len(state.users) / (2 * state.figures["ceiling_users_per_s"]),
    }
    reads = measure.cache_reads(client, state.sample(config.cache_reads))
    state.figures["cache_read_ms"] = reads["p50_ms"]
    state.references["cache_read_ms"] = {
        "ping_p50_ms": reads["ping_p50_ms"],
        "reads": min(config.cache_reads, len(state.users)),
        "entry_bytes": reads["entry_bytes"],
        "redis_bytes_per_entry": reads["redis_bytes_per_entry"],
    }


def _latency(state: _Run, client) -> None:
    config = state.config
    state.notify(f"latency: {config.latency_requests:,} single-user requests at {config.rate:.0f}/s")
    samples = measure.RequestStream(client, config.rate, config.n).run(state.sample(config.latency_requests))
    summary = measure.latency_summary(samples, config.repeats)
    state.figures["latency_ms"] = {"p50": summary["p50"], "p99": summary["p99"]}
    state.references["latency_ms"] = {
        **{k: v for k, v in summary.items() if k not in ("p50", "p99")},
        "in_process_ms": state.details["in_process_single_user_ms"],
    }


def _soak(state: _Run, service: Service) -> None:
    config = state.config
    state.notify(
        f"memory: {config.soak_passes} passes over the catalogue in jobs of {config.batch} users, "
        f"then {config.soak_single_jobs:,} single-user jobs"
    )
    for _ in range(config.soak_passes):
        measure.run_batches(service, state.sample(len(state.users)), config.batch, config.n, state.timeout())
    singles = [state.users[i] for i in state.rng.integers(0, len(state.users), config.soak_single_jobs)]
    measure.run_batches(service, singles, 1, config.n, state.timeout() + config.soak_single_jobs / 50)


def _record_memory(state: _Run, service: Service, pids: list[int], baseline: tuple[dict[int, float], int]) -> None:
    before, jobs_before = baseline
    after = machine.rss_by_pid(pids)
    growth = max((after[pid] - before[pid]) / before[pid] * 100 for pid in pids)
    state.figures["worker_rss_mb"] = {"rss_mb": max(after.values()), "growth_pct": growth}
    state.references["worker_rss_mb"] = {
        "jobs": service.jobs_done() - jobs_before,
        "rss_before_mb": max(before.values()),
        "load_mb": state.details["load_mb"],
        "rss_after_mb": list(after.values()),
    }


def _swap(state: _Run, service: Service, client, candidate: str) -> None:
    """Promote the retrained version under a stream of single-user requests; time until every worker serves it."""
    from bookrec.model_store.promotion import promote
    from bookrec.model_store.store import ModelStore

    config = state.config
    store = ModelStore(state.prepared.store)
    state.notify(f"hot swap: promoting {candidate} under {config.rate:.0f} requests/s")
    failed_before = measure.failed_jobs(service)
    workers = list(service.serving_workers())
    clock = {"start": time.perf_counter()}

    def tick() -> bool:
        now = time.perf_counter()
        if "promoted" not in clock:
            if now - clock["start"] >= config.swap_lead_s:
                clock["promoted"] = time.perf_counter()
                promoter.start()  # in a thread: the store's lock and fsync must not hold up the stream of requests
        elif "swapped" not in clock:
            if now >= clock.get("next_check", 0):
                clock["next_check"] = now + 0.01
                if all(version == candidate for version in service.versions(workers)):
                    clock["swapped"] = time.perf_counter()
        return now > clock.get("swapped", now) + config.swap_lead_s

    promoter = threading.Thread(
        target=promote, args=(store, service.client, service.keys, candidate), kwargs={"reason": "bench hot swap"}
    )
    users = state.sample(int(config.rate * (2 * config.swap_lead_s + config.swap_timeout_s)))
    samples = measure.RequestStream(client, config.rate, config.n).run(users, tick)
    if "promoted" in clock:
        promoter.join()
    if "swapped" not in clock:
        raise BookrecError(f"not every worker served {candidate} within {config.swap_timeout_s:.0f} s of its promotion")
    slowest = max(s.latency_s * 1000 for s in samples if s.latency_s is not None)
    failed = measure.failed_jobs(service) - failed_before + sum(s.latency_s is None for s in samples)
    stale = sum(1 for s in samples if s.sent > clock["swapped"] and s.version not in (None, candidate))
    state.figures["swap_s"] = {
        "seconds": clock["swapped"] - clock["promoted"],
        "failed_jobs": failed,
        "slowest_ms": slowest,
    }
    state.references["swap_s"] = {
        "peak_rss_mb": max(machine.rss_mb(pid, "VmHWM") for pid in service.pids_serving(candidate)),
        "slowest_vs_p99": slowest / state.figures["latency_ms"]["p99"],
        "requests": len(samples),
        "model_load_s": state.details["model_load_s"],
        "stale_after_swap": stale,
    }


def _clean_up(service: Service, state: _Run) -> None:
    """Flush the benchmark's database; leave the store with the base version in production (serving) and the cached
    base versions of other kinds (see `catalogue.cached_base`), deleting what the run trained besides its base."""
    from bookrec.model_store.store import ModelStore

    service.release()
    if not state.base:
        return
    store = ModelStore(state.prepared.store)
    store.set_production(state.base)
    kept = {state.base, *catalogue.cached_bases(store, but=state.prepared.kind)}
    for entry in store.list():
        if entry["version"] not in kept:
            store.delete(entry["version"])
