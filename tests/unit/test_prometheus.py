"""The Prometheus metrics with prometheus_client's own registry (fakeredis, the session's trained version): the
settings, the HTTP exporter, a supervisor's registry summing its worker processes (real processes writing in
multiprocess mode), and what jobs, swaps, retrains, the ingest and the scheduler count."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import fakeredis
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.ingest.consumer import GROUP, Ingest
from bookrec.ingest.lag import LagCollector
from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.scheduler.triggers import AFTER_RATINGS, CRON, RatingsTrigger, request_retrain
from bookrec.shared import delta
from bookrec.shared.errors import ConfigError
from bookrec.shared.keys import QUEUE_FRESH, QUEUE_RECOMMEND, Keys
from bookrec.shared.metrics import WorkerMetricsDir, serve
from bookrec.shared.ratings import StoredRating
from bookrec.shared.settings import Settings
from bookrec.worker.serve import metrics
from bookrec.worker.serve.retrain import retrain_outcome
from bookrec.worker.serve.rq_worker import BookrecWorker
from bookrec.worker.serve.runtime import ModelRuntime
from bookrec.worker.serve.supervisor_metrics import SupervisorCollector
from bookrec.worker.serve.swap import ModelHolder
from tests.conftest import REPO
from tests.unit.conftest import install_context
from tests.unit.test_scheduler import rate
from tests.unit.test_swap import FakeRuntime, Loader, versions  # noqa: F401 (versions: a fixture)

KEYS = Keys()


def sample(name: str, registry: CollectorRegistry = REGISTRY, **labels: str) -> float:
    """A sample's value in `registry` (0 when it has none yet: a labelled metric before its first count)."""
    return registry.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


# ---- settings ------------------------------------------------------------------------------------------------------


def test_each_process_has_its_own_default_metrics_port_and_0_turns_one_off() -> None:
    default = Settings.from_env({})
    assert (default.metrics_port, default.ingest_metrics_port, default.scheduler_metrics_port) == (9810, 9811, 9812)
    assert default.metrics_host == "127.0.0.1"
    chosen = Settings.from_env(
        {"BOOKREC_METRICS_PORT": "0", "BOOKREC_INGEST_METRICS_PORT": "", "BOOKREC_METRICS_HOST": "0.0.0.0"}
    )
    assert (chosen.metrics_port, chosen.ingest_metrics_port, chosen.metrics_host) == (0, 9811, "0.0.0.0")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("70000", "BOOKREC_METRICS_PORT=70000 must be at most 65535"), ("ninety", "'ninety' is not a whole number")],
)
def test_a_metrics_port_that_is_no_port_is_one_clear_error(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env({"BOOKREC_METRICS_PORT": value})


# ---- the exporter --------------------------------------------------------------------------------------------------


def test_the_exporter_serves_its_registry_until_stopped() -> None:
    registry = CollectorRegistry()
    Counter("bookrec_test_things", "things", registry=registry).inc(3)
    server = serve(registry, "127.0.0.1", free_port(), "test")
    assert server is not None
    try:
        assert "bookrec_test_things_total 3.0" in scrape(server.url)
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)


def test_port_0_serves_nothing_and_a_busy_port_is_logged_while_the_process_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert serve(CollectorRegistry(), "127.0.0.1", 0, "test") is None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="bookrec.shared.metrics"):
            assert serve(CollectorRegistry(), "127.0.0.1", port, "supervisor") is None
    assert f"supervisor: cannot serve metrics on 127.0.0.1:{port}" in caplog.text
    assert "running without them" in caplog.text


# ---- a supervisor's registry over its worker processes --------------------------------------------------------------

WORKER = """
import sys
from bookrec.worker.serve import metrics
metrics.job_ran("recommend", True, 0.02)
metrics.serving(sys.argv[1], None)
print(__import__("os").getpid())
"""


def run_worker(directory: WorkerMetricsDir, version: str) -> int:
    """Run a process that counts as a worker serving `version` does, writing into `directory`; its pid."""
    env = {"PATH": "/usr/bin:/bin", **directory.env()}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, version], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_supervisor_sums_its_workers_counts_and_forgets_the_gauges_of_one_that_died() -> None:
    directory = WorkerMetricsDir()
    try:
        pids = [run_worker(directory, version) for version in ("v1", "v2")]
        registry = directory.registry()

        assert sample("bookrec_jobs_total", registry, queue="recommend", outcome="succeeded") == 2
        assert sample("bookrec_job_duration_seconds_count", registry, queue="recommend") == 2
        assert sample("bookrec_model_served", registry, version="v1", pid=str(pids[0])) == 1
        assert sample("bookrec_model_served", registry, version="v2", pid=str(pids[1])) == 1

        directory.process_dead(pids[0])

        assert registry.get_sample_value("bookrec_model_served", {"version": "v1", "pid": str(pids[0])}) is None
        assert sample("bookrec_model_served", registry, version="v2", pid=str(pids[1])) == 1
        jobs = sample("bookrec_jobs_total", registry, queue="recommend", outcome="succeeded")
        assert jobs == 2, "a dead worker's jobs still count"
    finally:
        directory.remove()
    assert not Path(directory.path).exists()


def test_the_supervisor_reports_its_processes_and_the_backlog_of_its_queues(
    redis: fakeredis.FakeRedis, server: fakeredis.FakeServer
) -> None:
    queues = [KEYS.queue(QUEUE_RECOMMEND), KEYS.queue(QUEUE_FRESH)]
    redis.rpush(Queue.redis_queue_namespace_prefix + queues[0], "j1", "j2", "j3")
    failed = FailedJobRegistry(queues[0], connection=redis).key
    redis.zadd(failed, {"kept": time.time() + 3600, "expired": time.time() - 10})
    waited_since_ms = int(time.time() * 1000) - 5000
    redis.zadd(KEYS.fresh_pending, {"reader-a": waited_since_ms, "reader-b": waited_since_ms + 4000})
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(redis, KEYS, queues, lambda: (2, 1)))

    assert sample("bookrec_worker_processes", registry) == 2
    assert sample("bookrec_worker_restarts_total", registry) == 1
    assert sample("bookrec_queue_jobs", registry, queue="recommend") == 3
    assert sample("bookrec_queue_jobs", registry, queue="fresh") == 0
    assert sample("bookrec_queue_failed_jobs", registry, queue="recommend") == 1, "an expired failure is not kept"
    assert sample("bookrec_fresh_pending_readers", registry) == 2
    assert 5 <= sample("bookrec_fresh_oldest_pending_age_seconds", registry) < 60

    server.connected = False  # Redis away: the scrape still answers, with what the supervisor knows itself
    assert sample("bookrec_worker_processes", registry) == 2
    assert registry.get_sample_value("bookrec_queue_jobs", {"queue": "recommend"}) is None


# ---- what a worker counts -------------------------------------------------------------------------------------------


@pytest.fixture
def worker(trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch):
    return install_context(trained, runtime, redis, monkeypatch, ["fresh", "recommend", "refresh"])


def run_job(redis: fakeredis.FakeRedis, func: str, kwargs: dict, queue: str = QUEUE_RECOMMEND) -> None:
    """Enqueue `func(**kwargs)` as JSON and run a real worker over it."""
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue(func, kwargs=kwargs)
    BookrecWorker([queue], connection=redis).work(burst=True, with_scheduler=False)


def test_a_recommend_job_counts_its_run_its_readers_their_fallbacks_and_the_lists_written(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis
) -> None:
    known = runtime.user_map.to_list()[:3]
    names = ["bookrec_readers_scored_total", "bookrec_fallback_lists_total", "bookrec_cache_writes_total"]
    before = [sample(name, queue="recommend") for name in names]
    runs = sample("bookrec_jobs_total", queue="recommend", outcome="succeeded")
    timed = sample("bookrec_job_duration_seconds_count", queue="recommend")

    run_job(redis, "worker.jobs.recommend", {"user_ids": [*known, "a-stranger"]})

    assert [sample(name, queue="recommend") - b for name, b in zip(names, before)] == [4, 1, 4]
    assert sample("bookrec_jobs_total", queue="recommend", outcome="succeeded") == runs + 1
    assert sample("bookrec_job_duration_seconds_count", queue="recommend") == timed + 1


def test_a_failed_job_counts_as_failed_and_writes_nothing(worker, redis: fakeredis.FakeRedis) -> None:
    failed = sample("bookrec_jobs_total", queue="recommend", outcome="failed")
    writes = sample("bookrec_cache_writes_total", queue="recommend")

    run_job(redis, "worker.jobs.recommend", {"user_ids": "not a list"})

    assert sample("bookrec_jobs_total", queue="recommend", outcome="failed") == failed + 1
    assert sample("bookrec_cache_writes_total", queue="recommend") == writes


def test_a_fresh_list_observes_the_time_from_its_newest_event_to_its_write(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis
) -> None:
    reader = runtime.user_map.to_list()[5]
    now = time.time()
    event_ms = int(now * 1000) - 3000  # the event entered the stream 3 s ago
    delta.write(redis, KEYS, [StoredRating(reader, "some-book", 4.0, now, now)], {reader: f"{event_ms}-0"})
    count = sample("bookrec_fresh_list_latency_seconds_count")
    total = sample("bookrec_fresh_list_latency_seconds_sum")

    run_job(redis, "worker.jobs.fresh", {"user_ids": [reader]}, QUEUE_FRESH)

    assert sample("bookrec_fresh_list_latency_seconds_count") == count + 1
    assert 3 <= sample("bookrec_fresh_list_latency_seconds_sum") - total < 60
    assert sample("bookrec_cache_writes_total", queue="fresh") >= 1
    assert json.loads(redis.get(KEYS.recs(reader)))["ratings_through"] == f"{event_ms}-0"


def test_a_latency_is_never_negative_and_a_reader_without_an_event_has_none() -> None:
    assert metrics.fresh_latencies(["1000-0", None, "2500-3", "9000-0"], now=3.0) == [2.0, 0.5, 0.0]


def test_a_swap_marks_the_new_version_served_and_the_old_one_not(versions, redis: fakeredis.FakeRedis) -> None:  # noqa: F811
    store, old, new = versions
    promote(store, redis, KEYS, old)
    holder = ModelHolder(store, redis, KEYS, "w1", [QUEUE_RECOMMEND], loader=Loader())
    holder.load_initial()
    swaps = sample("bookrec_model_swaps_total", outcome="swapped")
    timed = sample("bookrec_model_swap_seconds_count")
    assert sample("bookrec_model_served", version=old) == 1
    assert sample("bookrec_model_swaps_total", outcome="swapped") == swaps, "the first load is no swap"

    promote(store, redis, KEYS, new)
    holder.notice()
    holder.publish_state()
    assert sample("bookrec_model_swap_pending") == 1
    assert holder.swap_if_due()
    holder.publish_state()

    assert (sample("bookrec_model_served", version=old), sample("bookrec_model_served", version=new)) == (0, 1)
    assert sample("bookrec_model_swap_pending") == 0
    assert sample("bookrec_model_swaps_total", outcome="swapped") == swaps + 1
    assert sample("bookrec_model_swap_seconds_count") == timed + 1


def test_a_version_that_fails_to_load_counts_a_failed_swap(versions, redis: fakeredis.FakeRedis) -> None:  # noqa: F811
    store, old, new = versions
    promote(store, redis, KEYS, new)
    holder = ModelHolder(store, redis, KEYS, "w1", [QUEUE_RECOMMEND], loader=Loader(broken=(new,)))
    holder.current = FakeRuntime(old)
    failed = sample("bookrec_model_swaps_total", outcome="failed")

    assert holder.check() is False

    assert sample("bookrec_model_swaps_total", outcome="failed") == failed + 1


def test_the_gate_metrics_hold_the_last_retrain_s_values() -> None:
    metrics.gate_judged("ndcg@10", 0.31, 0.29)
    metrics.gate_judged("ndcg@10", 0.33, None)  # a first version: no production to compare with

    assert sample("bookrec_gate_metric", model="candidate", metric="ndcg@10") == pytest.approx(0.33)
    assert sample("bookrec_gate_metric", model="production", metric="ndcg@10") == pytest.approx(0.29)


def test_a_retrain_s_outcome_names_what_it_did() -> None:
    decided = {"no_new_ratings": False}
    assert retrain_outcome({"decision": decided, "promoted": True}) == "promoted"
    assert retrain_outcome({"decision": decided, "promoted": False}) == "rejected"
    assert retrain_outcome({"decision": {"no_new_ratings": True}, "promoted": False}) == "unchanged"


# ---- the ingest -----------------------------------------------------------------------------------------------------


@pytest.fixture
def ingest(redis: fakeredis.FakeRedis, store: RatingsStore) -> Ingest:
    consumer = Ingest(redis, store, Settings(ingest_batch=50), name="unit-metrics")
    consumer.ensure_group()
    return consumer


def events() -> dict[str, float]:
    return {
        outcome: sample("bookrec_ingest_events_total", outcome=outcome) for outcome in ("applied", "duplicate", "dead")
    }


def test_an_acknowledged_batch_counts_its_events_by_outcome_and_its_commit(
    ingest: Ingest, redis: fakeredis.FakeRedis
) -> None:
    stream = ingest.keys.ratings_stream
    redis.xadd(stream, {"user_id": "1", "book_id": "10", "rating": "4", "event_id": "e1"})
    redis.xadd(stream, {"user_id": "1", "book_id": "11", "rating": "9"})  # off the scale: dead
    before, commits = events(), sample("bookrec_ingest_commit_seconds_count")
    ingest.step()
    redis.xadd(stream, {"user_id": "1", "book_id": "10", "rating": "2", "event_id": "e1"})  # sent again
    ingest.step()

    after = events()
    assert {k: after[k] - before[k] for k in after} == {"applied": 1, "duplicate": 1, "dead": 1}
    assert sample("bookrec_ingest_commit_seconds_count") == commits + 2


def test_the_lag_collector_reports_the_dead_stream_and_the_age_of_the_oldest_entry_not_acknowledged(
    ingest: Ingest, redis: fakeredis.FakeRedis, server: fakeredis.FakeServer
) -> None:
    stream = ingest.keys.ratings_stream
    old_ms = int(time.time() * 1000) - 8000
    redis.xadd(stream, {"user_id": "1", "book_id": "10", "rating": "4"}, id=f"{old_ms}-0")
    redis.xadd(stream, {"user_id": "1", "book_id": "11", "rating": "9"})
    redis.xreadgroup(GROUP, "someone", {stream: ">"}, count=1)  # read, not acknowledged: pending
    registry = CollectorRegistry()
    registry.register(LagCollector(redis, ingest.keys))

    assert 8 <= sample("bookrec_ingest_oldest_unacknowledged_age_seconds", registry) < 60
    assert sample("bookrec_ingest_dead_entries", registry) == 0

    ingest.step()  # the pending one is claimed later; the new one is read, and dead-lettered
    assert sample("bookrec_ingest_dead_entries", registry) == 1

    server.connected = False
    assert list(registry.collect()) == [], "Redis away: the scrape answers without them"


# ---- the scheduler --------------------------------------------------------------------------------------------------


@pytest.fixture
def client(redis: fakeredis.FakeRedis, trained, tmp_path: Path) -> Client:
    return Client(settings=Settings(model_store=tmp_path / "models", data_dir=trained.data_dir), connection=redis)


def test_each_scheduled_retrain_is_counted_under_its_trigger_and_outcome(
    client: Client, redis: fakeredis.FakeRedis
) -> None:
    enqueued = sample("bookrec_scheduler_retrains_total", trigger=CRON, outcome="enqueued")
    running = sample("bookrec_scheduler_retrains_total", trigger=AFTER_RATINGS, outcome="running")

    assert request_retrain(client, "test") is not None
    assert request_retrain(client, "test", AFTER_RATINGS) is None  # the first one holds the retrain lock

    assert sample("bookrec_scheduler_retrains_total", trigger=CRON, outcome="enqueued") == enqueued + 1
    assert sample("bookrec_scheduler_retrains_total", trigger=AFTER_RATINGS, outcome="running") == running + 1


def test_the_after_ratings_check_reports_the_ratings_it_counted(
    client: Client, ratings_store: RatingsStore, tmp_path: Path
) -> None:
    check = RatingsTrigger(client, ratings_store, ModelStore(tmp_path / "models"), threshold=10)
    rate(ratings_store, "u1", "u2", "u3")  # no production: every rating counts

    assert check() is None, "3 of 10"

    assert sample("bookrec_scheduler_new_ratings") == 3
