"""The running service: real Redis, real `bookrec worker` processes, the producer Client and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.errors import JobFailed, RetrainRunning
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, Keys
from bookrec.shared.settings import Settings
from tests.conftest import REPO, TEST_REDIS_URL, TrainedStore, WorkerPool, changed_copy

pytestmark = pytest.mark.integration

TIMEOUT = 60


def client_for(store: TrainedStore) -> Client:
    """A producer Client configured like the workers of `store`."""
    return Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(store.env()))


def serve(
    store: TrainedStore, redis_client: redis.Redis, start_workers, processes: int = 2
) -> tuple[Client, WorkerPool]:
    """Promote the store's version, start workers that have loaded it; return a Client and the pool."""
    promote(ModelStore(store.store), redis_client, Keys(), store.version)
    pool = start_workers(store.env(), processes=processes)
    pool.wait_ready(redis_client, processes, store.version)
    return client_for(store), pool


def rated_books(store: TrainedStore) -> pd.Series:
    """Each user's set of rated book ids (strings), from the ratings file."""
    ratings = pd.read_csv(store.data_dir / "ratings.csv", dtype={"user_id": str, "book_id": str})
    return ratings.groupby("user_id")["book_id"].agg(set)


def test_recommend_waits_for_lists_any_service_can_read(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    client, _ = serve(fresh_store, redis_client, start_workers)
    rated = rated_books(fresh_store)
    known = list(rated.index[:5])

    entries = client.recommend([*known, "cold-reader"], n=10, wait=True, timeout=TIMEOUT)

    assert [str(e["user_id"]) for e in entries] == [*known, "cold-reader"]
    assert {e["model_version"] for e in entries} == {fresh_store.version}
    for entry in entries[:-1]:
        books = {str(item["book_id"]) for item in entry["items"]}
        assert len(books) == 10 and entry["fallback"] is None
        assert not books & rated[str(entry["user_id"])]
    assert entries[-1]["fallback"] == "popular" and len(entries[-1]["items"]) == 10
    plain = redis.Redis.from_url(TEST_REDIS_URL)  # as another service would read it: GET + a JSON parser
    assert json.loads(plain.get(f"bookrec:recs:{known[0]}")) == entries[0]
    assert json.loads(plain.get("bookrec:recs:cold-reader")) == entries[-1]
    assert plain.ttl(f"bookrec:recs:{known[0]}") == -1  # BOOKREC_CACHE_TTL=0 (the default): lists never expire
    plain.close()


def test_a_job_outside_the_allowlist_fails_and_the_worker_goes_on(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers, tmp_path: Path
) -> None:
    client, _ = serve(fresh_store, redis_client, start_workers, processes=1)  # one process: the same worker must go on
    target = tmp_path / "pwned"

    refused = Queue(QUEUE_RECOMMEND, connection=redis_client, serializer=JSONSerializer).enqueue(
        "os.system", f"touch {target}"
    )
    with pytest.raises(JobFailed, match="refused to run 'os.system'"):
        client.wait([refused], timeout=TIMEOUT)
    entries = client.recommend([1], n=3, wait=True, timeout=TIMEOUT)

    assert not target.exists()
    assert (
        refused.id
        in FailedJobRegistry(QUEUE_RECOMMEND, connection=redis_client, serializer=JSONSerializer).get_job_ids()
    )
    assert entries[0]["user_id"] == 1 and len(entries[0]["items"]) == 3


def test_status_json_describes_workers_queues_production_cache_and_failures(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    client, _ = serve(fresh_store, redis_client, start_workers)
    client.recommend([1, 2, 3], n=5, wait=True, timeout=TIMEOUT)
    bad = Queue(QUEUE_RECOMMEND, connection=redis_client, serializer=JSONSerializer).enqueue(
        "worker.jobs.recommend", [1], n=0
    )
    with pytest.raises(JobFailed, match="n must be"):
        client.wait([bad], timeout=TIMEOUT)
    retrain = client.retrain()  # no trainer runs, so it stays queued

    result = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "status", "--json"],
        env=fresh_store.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["production_version"] == fresh_store.version
    assert len(status["workers"]) == 2
    assert all(
        w["model_version"] == fresh_store.version and w["queues"] == ["recommend", "refresh"] for w in status["workers"]
    )
    assert status["queues"]["retrain"]["queued"] == 1 and status["queues"]["recommend"]["queued"] == 0
    assert status["queues"]["recommend"]["failed"] == 1 and status["failed_jobs"] == 1
    assert status["cache_entries"] == 3
    assert status["retrain_running"] == retrain.id


def test_sigterm_stops_workers_after_their_current_job(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    client, pool = serve(fresh_store, redis_client, start_workers)
    jobs = client.recommend([f"reader-{i}" for i in range(100_000)], n=10)  # 100 jobs of 1,000 users
    client.wait(jobs[:1], timeout=TIMEOUT)  # the workers are busy now

    started = time.monotonic()
    pool.process.send_signal(signal.SIGTERM)
    code = pool.process.wait(timeout=30)
    seconds = time.monotonic() - started

    assert code == 0
    assert seconds < 10, f"supervisor took {seconds:.1f} s to stop"
    for queue in (QUEUE_RECOMMEND, QUEUE_REFRESH):
        assert StartedJobRegistry(queue, connection=redis_client, serializer=JSONSerializer).count == 0
        assert FailedJobRegistry(queue, connection=redis_client, serializer=JSONSerializer).count == 0
    statuses = [job.get_status(refresh=True) for job in jobs]
    assert set(statuses) <= {JobStatus.FINISHED, JobStatus.QUEUED}
    assert statuses.count(JobStatus.QUEUED) > 0, "the workers drained the queue instead of stopping"


def test_a_second_retrain_is_refused_while_the_first_runs(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers, tmp_path: Path
) -> None:
    # Production was trained on ratings.csv; the trainer's data dir holds a changed copy (5% of the rows gone),
    # so the retrain trains, and is judged on rows production held out.
    fresh_store = changed_copy(fresh_store, tmp_path)
    promote(ModelStore(fresh_store.store), redis_client, Keys(), fresh_store.version)
    trainer = start_workers({**fresh_store.env(), "BOOKREC_TF_THREADS": ""}, queues="retrain", processes=1)
    client = client_for(fresh_store)

    first = client.retrain(params={"steps": 60}, ratings="ratings.csv")
    with pytest.raises(RetrainRunning, match=first.id) as raised:
        client.retrain()
    result = client.wait([first], timeout=120)[0]
    trainer.stop()

    assert raised.value.job_id == first.id
    decision = result["decision"]
    assert result["production"]["version"] == fresh_store.version
    assert decision["metric"] == "ndcg@10"
    assert decision["candidate"] == result["metrics"]["ndcg@10"] and isinstance(decision["candidate"], float)
    assert decision["production"] == result["production"]["metrics"]["ndcg@10"] and isinstance(
        decision["production"], float
    )
    assert decision["promote"] is result["promoted"] and decision["reason"]
    assert decision["test_rows_unseen_by_production"] is True and decision["no_new_ratings"] is False
    assert ModelStore(fresh_store.store).metadata(result["version"])["split"]["kept_in_train"] > 0
    assert redis_client.get("bookrec:lock:retrain") is None
    assert "TensorFlow uses all cores" in trainer.log.read_text(), "a trainer uses every core by default"
    assert client.retrain().id != first.id  # the lock is free again
