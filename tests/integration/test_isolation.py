"""Two deployments with different BOOKREC_KEY_PREFIXes on one Redis database, at once, with real worker processes:
neither sees the other's jobs, workers, events or cache."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.shared.worker_state import read_all as worker_states
from tests.conftest import TEST_REDIS_URL, TrainedStore

pytestmark = pytest.mark.integration

TIMEOUT = 60
PREFIXES = ("bookrec:", "staging:")


def deployment(trained: TrainedStore, root: Path, prefix: str, redis_client: redis.Redis, start_workers) -> Client:
    """A deployment under `prefix` with its own copy of the store, in production, served by one worker process."""
    store = TrainedStore(trained.data_dir, root / prefix.rstrip(":"), trained.version)
    shutil.copytree(trained.store, store.store)
    promote(ModelStore(store.store), redis_client, Keys(prefix), store.version)
    env = store.env(BOOKREC_KEY_PREFIX=prefix)
    start_workers(env, processes=1).wait_ready(redis_client, 1, store.version, prefix=prefix)
    return Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(env))


def wait_for_refresh(client: Client, job: Job) -> None:
    """Wait until every chunk of a refresh is done (its counter is the only sign; `bookrec refresh --wait` polls it too)."""
    client.wait([job], timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while (progress := client.refresh_progress(job)) is None or progress[0] < progress[1]:
        assert time.monotonic() < deadline, f"refresh at {progress} after {TIMEOUT} s"
        time.sleep(0.1)


def test_two_prefixes_on_one_database_never_see_each_other(
    trained: TrainedStore, redis_client: redis.Redis, start_workers, tmp_path: Path
) -> None:
    production, staging = (deployment(trained, tmp_path, p, redis_client, start_workers) for p in PREFIXES)
    workers = {p: {s["name"] for s in worker_states(redis_client, Keys(p))} for p in PREFIXES}
    assert len(workers["bookrec:"]) == len(workers["staging:"]) == 1 and not workers["bookrec:"] & workers["staging:"]
    events = redis_client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(Keys("bookrec:").events)

    jobs = {
        "bookrec:": production.recommend(["1", "2", "3"], n=10) + production.recommend(["4"], n=10),
        "staging:": staging.recommend(["5", "6"], n=20) + staging.recommend(["7"], n=20),
    }
    for client, prefix in ((production, "bookrec:"), (staging, "staging:")):
        client.wait(jobs[prefix], timeout=TIMEOUT)
    event = staging.promote(trained.version, reason="staging only")  # its event and its refresh stay under staging:
    wait_for_refresh(staging, Job.fetch(event["refresh_job"], connection=redis_client, serializer=JSONSerializer))

    for prefix, handles in jobs.items():
        served_by = {Job.fetch(j.id, connection=redis_client, serializer=JSONSerializer).worker_name for j in handles}
        assert served_by == workers[prefix], f"{prefix} jobs were served by {served_by}"
    for client, prefix in ((production, "bookrec:"), (staging, "staging:")):
        status = client.status()
        assert {w["name"] for w in status["workers"]} == workers[prefix]
        assert status["failed_jobs"] == 0
    cached = {p: sorted(k.decode() for k in redis_client.scan_iter(match=Keys(p).recs_pattern)) for p in PREFIXES}
    assert cached["bookrec:"] == [f"bookrec:recs:{u}" for u in "1234"]
    assert set(cached["staging:"]) >= {f"staging:recs:{u}" for u in "567"}  # and the users its refresh covers
    assert [len(production.get(u).items) for u in "1234"] == [10] * 4  # staging's n=20 did not lengthen these
    assert [len(staging.get(u).items) for u in "567"] == [20] * 3
    assert events.get_message(timeout=1.0) is None  # production heard nothing of staging's promotion
    events.close()
