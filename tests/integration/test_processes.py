"""The worker processes' own faults, for real: a supervisor SIGKILLed (alone, and with its whole pool just after
each worker claimed a job), a promoted version's directory hidden while workers load it, a garbage production
pointer, production's directory gone. What a user relies on: no job lost, no worker left unsupervised, workers
serving again by themselves, and a retrain that still trains and promotes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from typing import Callable

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import worker_state
from bookrec.shared.errors import JobFailed
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings
from tests.conftest import TrainedStore
from tests.integration.test_faults import LogWatch, alive, clone_version, wait_for

pytestmark = pytest.mark.integration

KEYS = Keys()


def client_of(env: dict[str, str]) -> Client:
    return Client(settings=Settings.from_env(env))


def worker_pids(client: redis.Redis) -> set[int]:
    """Pids of the live worker processes that publish a state (serving or waiting for a model)."""
    return {int(s["pid"]) for s in worker_state.read_all(client, KEYS) if alive(int(s["pid"]))}


def all_gone(pids: set[int]) -> Callable[[], bool]:
    return lambda: not any(alive(pid) for pid in pids)


def failed_jobs(client: redis.Redis) -> list[str]:
    return [
        job
        for queue in (QUEUE_RECOMMEND, QUEUE_REFRESH)
        for job in FailedJobRegistry(queue, connection=client, serializer=JSONSerializer).get_job_ids()
    ]


def freeze_each_worker_holding_a_job(client: redis.Redis, count: int) -> dict[int, str]:
    """SIGSTOP `count` serving workers each at a moment Redis shows it holding a job; {pid: job id}."""
    frozen: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while len(frozen) < count and time.monotonic() < deadline:
        for worker in Worker.all(queue=Queue(QUEUE_RECOMMEND, connection=client), serializer=JSONSerializer):
            if worker.pid in frozen:
                continue
            os.kill(worker.pid, signal.SIGSTOP)
            record = Worker.find_by_key(worker.key, connection=client, serializer=JSONSerializer)
            job_id = record.get_current_job_id() if record is not None else None
            if job_id is None:
                os.kill(worker.pid, signal.SIGCONT)
            else:
                frozen[worker.pid] = job_id
        time.sleep(0.005)
    assert len(frozen) == count, f"only {len(frozen)} of {count} workers were caught holding a job"
    return frozen


def test_workers_stop_after_their_job_when_their_supervisor_is_killed_and_a_new_one_runs_only_its_own(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    env = fresh_store.env()
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    first = start_workers(env)
    first.wait_ready(redis_client, 2, fresh_store.version, timeout=120)
    old = worker_pids(redis_client)
    client = client_of(env)
    users = list(range(1, 10_001))
    jobs = client.recommend(users, n=50)  # 10 jobs of 1,000 users: workers are busy when the supervisor dies
    wait_for(lambda: any(w["current_job"] for w in client.status()["workers"]), "a worker to be busy")

    os.kill(first.process.pid, signal.SIGKILL)
    wait_for(all_gone(old), "the killed supervisor's workers to stop by themselves", 60)
    assert failed_jobs(redis_client) == [], "a worker was stopped mid-job"

    second = start_workers(env)
    second.wait_ready(redis_client, 2, fresh_store.version, timeout=120)
    client.wait(jobs, timeout=120)
    assert [u for u, e in zip(users, redis_client.mget([KEYS.recs(str(u)) for u in users])) if e is None] == []
    shown = client.status()["workers"]
    assert len(shown) == 2 and not {w["pid"] for w in shown} & old and all(alive(w["pid"]) for w in shown)

    serving = worker_pids(redis_client)
    assert second.stop() == 0
    assert not any(alive(pid) for pid in serving), "SIGTERM to the new supervisor left a worker running"


def test_jobs_held_by_a_whole_pool_killed_at_once_are_recovered_by_the_next_supervisor(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    env = fresh_store.env()
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    pool = start_workers(env)
    pool.wait_ready(redis_client, 2, fresh_store.version, timeout=120)
    client = client_of(env)
    users = list(range(1, 20_001))
    jobs = client.recommend(users, n=50)

    frozen = freeze_each_worker_holding_a_job(redis_client, 2)
    os.kill(pool.process.pid, signal.SIGKILL)
    for pid in frozen:
        os.kill(pid, signal.SIGKILL)
    wait_for(all_gone(set(frozen)), "the frozen workers to die")
    held = [Job.fetch(job, connection=redis_client, serializer=JSONSerializer) for job in frozen.values()]
    assert all(job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.STARTED) for job in held)

    restarted = start_workers(env)
    for job in held:
        wait_for(lambda job=job: job.get_status(refresh=True) == JobStatus.FINISHED, f"job {job.id} to finish", 120)
    client.wait(jobs, timeout=120)
    assert [u for u, e in zip(users, redis_client.mget([KEYS.recs(str(u)) for u in users])) if e is None] == []
    assert failed_jobs(redis_client) == []
    assert StartedJobRegistry(QUEUE_RECOMMEND, connection=redis_client).get_job_ids() == []
    assert "handed back" in restarted.log_tail(1_000_000)


def test_a_worker_that_failed_to_load_a_promoted_version_retries_and_a_refresh_counts_only_that_version(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    env = fresh_store.env(BOOKREC_REFRESH_CHUNK="50")
    store = ModelStore(fresh_store.store)
    old = fresh_store.version
    promote(store, redis_client, KEYS, old)
    pool = start_workers(env)
    pool.wait_ready(redis_client, 2, old, timeout=120)
    client = client_of(env)
    new = clone_version(fresh_store.store, old)

    redis_client.set(KEYS.swap_slot(0), "the-test", ex=60)  # nobody loads until the directory is hidden
    promote(store, redis_client, KEYS, new)
    hidden = fresh_store.store.parent / "hidden"
    shutil.move(fresh_store.store / new, hidden)
    redis_client.delete(KEYS.swap_slot(0))

    def both_pending_with_the_error() -> bool:
        workers = client.status()["workers"]
        return len(workers) == 2 and all(
            w["model_version"] == old and w["pending_version"] == new and "not found" in (w["load_error"] or "")
            for w in workers
        )

    wait_for(both_pending_with_the_error, "status to show both workers pending on the new version with the error")
    assert any(f"cannot load {new}" in warning for warning in client.status()["warnings"])
    with pytest.raises(JobFailed, match=f"VersionNotServed: .* not {new}"):
        client.wait([client.refresh()], timeout=60)  # a refresh for the new version never runs on the old one

    shutil.move(hidden, fresh_store.store / new)
    pool.wait_ready(redis_client, 2, new, timeout=60)
    assert all(w["load_error"] is None for w in client.status()["workers"])
    refresh = client.refresh()
    client.wait([refresh], timeout=60)
    wait_for(lambda: (p := client.refresh_progress(refresh)) and p[0] >= p[1], "the refresh to finish", 60)
    users = ModelStore(fresh_store.store).metadata(new)["id_maps"]["users"]
    entries = redis_client.mget([KEYS.recs(str(u)) for u in users])
    assert [json.loads(e)["model_version"] if e else None for e in entries] == [new] * len(users)


def test_a_garbage_pointer_is_repaired_from_the_store_record_and_no_worker_restarts(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    env = fresh_store.env()
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    redis_client.set(KEYS.model_current, "garbage")  # before the workers start
    pool = start_workers(env)
    pool.wait_ready(redis_client, 2, fresh_store.version, timeout=120)
    assert redis_client.get(KEYS.model_current).decode() == fresh_store.version
    pids = worker_pids(redis_client)
    log = LogWatch(pool.log)

    redis_client.set(
        KEYS.model_current, "v20991231T000000000000Z"
    )  # while they serve: a well-formed id, no such version
    wait_for(lambda: redis_client.get(KEYS.model_current).decode() == fresh_store.version, "the pointer's repair")
    client = client_of(env)
    assert client.status()["production_version"] == fresh_store.version
    entries = client.recommend([1, 2], wait=True, timeout=30)
    assert {e["model_version"] for e in entries} == {fresh_store.version}
    assert worker_pids(redis_client) == pids and log.lines("exited with code") == []


def test_with_production_s_directory_gone_workers_wait_saying_so_and_a_retrain_still_promotes(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    env = fresh_store.env()
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    shutil.move(fresh_store.store / fresh_store.version, fresh_store.store.parent / "moved-away")
    pool = start_workers(env)
    start_workers(env, queues=QUEUE_RETRAIN, processes=1)
    client = client_of(env)

    def both_waiting() -> bool:
        workers = [w for w in client.status()["workers"] if QUEUE_RETRAIN not in w["queues"]]
        return len(workers) == 2 and all(
            w["state"] == "waiting"
            and w["pending_version"] == fresh_store.version
            and f"model version {fresh_store.version} not found" in (w["load_error"] or "")
            for w in workers
        )

    wait_for(both_waiting, "status to show both workers waiting for a servable production", 120)
    assert client.status()["production_version"] == fresh_store.version  # what the store records, missing or not
    wait_for(lambda: client.listeners(QUEUE_RETRAIN), "the trainer to listen", 120)

    result = client.retrain(
        params={"steps": 60}, ratings="ratings.csv", wait=True, timeout=180
    )  # not forced: the gate has nothing to compare
    assert result["promoted"] is True and result["production"]["version"] is None
    pool.wait_ready(redis_client, 2, result["version"], timeout=120)
    entries = client.recommend([1, 2], wait=True, timeout=60)
    assert {e["model_version"] for e in entries} == {result["version"]}
    assert "exited with code" not in pool.log_tail(1_000_000), "a waiting worker exited"
