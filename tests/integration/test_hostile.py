"""Hostile jobs and cache entries: whatever someone writes into Redis fails one job or one read, never a worker.

Jobs are written by hand, as any process that can write to Redis could: HSET of the job hash, LPUSH of its
id on `rq:queue:NAME`. One real serving worker process and one real trainer process serve them; after each
hostile job a good job enqueued behind it must be served by the same worker, and nothing may be left
queued, in the started registry or half-dequeued.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import jobs
from bookrec.shared.entries import MAX_ENTRY_BYTES
from bookrec.shared.errors import JobFailed, MalformedEntry
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.jobs import MAX_REJECTED_LISTED
from bookrec.worker.serve.rq_worker import AllowlistedJob
from tests.conftest import REPO, TEST_REDIS_URL, TrainedStore, WorkerPool
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys()
TIMEOUT = 60
QUITTING = "found an unhandled exception, quitting"


@dataclass
class Service:
    """A serving worker process and a trainer process on the test database, and what a test needs of them."""

    store: TrainedStore
    admin: redis.Redis
    client: Client
    serving: WorkerPool
    trainer: WorkerPool
    logs: tuple[Path, Path]

    def log_text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)


@pytest.fixture(scope="module")
def service(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("hostile")
    store = TrainedStore(trained.data_dir, root / "models", trained.version)
    shutil.copytree(trained.store, store.store)  # the session's store is never changed
    admin = redis.Redis.from_url(TEST_REDIS_URL)
    admin.flushdb()
    promote(ModelStore(store.store), admin, KEYS, store.version)
    logs = (root / "serving.log", root / "trainer.log")
    serving = WorkerPool(store.env(), "recommend,refresh", processes=1, log=logs[0])
    trainer = WorkerPool(store.env(), "retrain", processes=1, log=logs[1])
    try:
        serving.wait_ready(admin, 1, store.version, timeout=90)
        client = Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(store.env()))
        wait_for_listener(client, QUEUE_RETRAIN)
        yield Service(store, admin, client, serving, trainer, logs)
    finally:
        serving.stop()
        trainer.stop()
        admin.flushdb()
        admin.close()


def wait_for_listener(client: Client, queue: str) -> None:
    deadline = time.monotonic() + 90
    while not client.listeners(queue):
        assert time.monotonic() < deadline, f"no worker came up on {queue}"
        time.sleep(0.2)


def plant(admin: redis.Redis, queue: str, kwargs: dict, func: str = jobs.RECOMMEND, **fields: str) -> str:
    """Write a job hash by hand (a field set to '' is left out) and push its id on the queue; return the id."""
    job_id = f"hostile-{uuid.uuid4().hex[:8]}"
    mapping = {
        "data": json.dumps([func, None, [], kwargs]),
        "status": "queued",
        "origin": queue,
        "created_at": "2026-12-01T00:00:00.000000Z",
        "enqueued_at": "2026-12-01T00:00:00.000000Z",
        **fields,
    }
    admin.hset(f"rq:job:{job_id}", mapping={k: v for k, v in mapping.items() if v != ""})
    admin.lpush(f"rq:queue:{queue}", job_id)
    return job_id


def reason(admin: redis.Redis, job_id: str) -> tuple[JobStatus, str]:
    """(status, last line of the failure) of a job, read as the worker reads job hashes."""
    job = AllowlistedJob.fetch(job_id, connection=admin, serializer=JSONSerializer)
    result = job.latest_result()
    return job.get_status(refresh=True), result.exc_string.strip().splitlines()[-1] if result.exc_string else ""


def assert_nothing_left(admin: redis.Redis, queue: str) -> None:
    """No job queued, half-dequeued (RQ's intermediate list) or in the started registry of `queue`."""
    started = StartedJobRegistry(queue, connection=admin, serializer=JSONSerializer)
    assert (admin.llen(f"rq:queue:{queue}"), admin.llen(f"rq:queue:{queue}:intermediate")) == (0, 0)
    assert admin.zrange(started.key, 0, -1) == []


POISON = {
    "timeout 'abc'": ({"timeout": "abc"}, "timeout 'abc' is not a number of seconds"),
    "no data field": ({"data": ""}, "the job hash has no 'data' field"),
    "status not RQ's": ({"status": "bogus"}, "RQ cannot read it (ValueError: 'bogus' is not a valid JobStatus)"),
    "created_at not a date": ({"created_at": "yesterday"}, "RQ cannot read it (ValueError:"),
}


@pytest.mark.parametrize("case", POISON, ids=list(POISON))
def test_a_poison_job_hash_fails_that_job_with_its_reason_and_the_worker_serves_the_next(
    service: Service, case: str
) -> None:
    fields, problem = POISON[case]
    failed_before = service.client.status()["queues"]["recommend"]["failed"]

    poison = plant(service.admin, QUEUE_RECOMMEND, {"user_ids": ["poisoned"]}, **fields)
    served = service.client.recommend(["after-poison"], wait=True, timeout=TIMEOUT)

    assert served[0]["user_id"] == "after-poison"
    status, last_line = reason(service.admin, poison)
    assert status == JobStatus.FAILED
    assert last_line.startswith(f"bookrec.worker.serve.rq_worker.MalformedJob: job {poison} is not a job bookrec")
    assert problem in last_line
    failed = FailedJobRegistry(QUEUE_RECOMMEND, connection=service.admin, serializer=JSONSerializer)
    assert poison in failed.get_job_ids()
    assert service.client.status()["queues"]["recommend"]["failed"] == failed_before + 1  # bookrec status shows it
    assert service.admin.get(KEYS.recs("poisoned")) is None
    assert_nothing_left(service.admin, QUEUE_RECOMMEND)
    assert QUITTING not in service.log_text()


OUT_OF_RANGE = {
    "timeout 10^23": ({"timeout": "99999999999999999999999"}, "timeout 99999999999999999999999 s is outside"),
    "timeout -1 (no limit)": ({"timeout": "-1"}, "timeout -1 s is outside"),
    "result_ttl 10^23": ({"result_ttl": "99999999999999999999999"}, "result_ttl 99999999999999999999999 s is over"),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE, ids=list(OUT_OF_RANGE))
def test_a_timeout_or_ttl_out_of_range_is_clamped_and_the_job_is_served(service: Service, case: str) -> None:
    fields, warning = OUT_OF_RANGE[case]
    user = f"clamped-{uuid.uuid4().hex[:6]}"

    clamped = plant(service.admin, QUEUE_RECOMMEND, {"user_ids": [user]}, **fields)
    service.client.recommend(["after-clamped"], wait=True, timeout=TIMEOUT)

    assert reason(service.admin, clamped) == (JobStatus.FINISHED, "")
    assert json.loads(service.admin.get(KEYS.recs(user)))["user_id"] == user
    assert f"job {clamped}: {warning}" in service.log_text()
    assert_nothing_left(service.admin, QUEUE_RECOMMEND)  # no started-registry entry scored 1e23 is left behind
    results = service.admin.ttl(f"rq:results:{clamped}")
    assert 0 < results <= jobs.MAX_TTL
    assert QUITTING not in service.log_text()


def test_a_retrain_enqueued_on_the_serving_queue_fails_there_and_trains_nothing(service: Service) -> None:
    store = ModelStore(service.store.store)
    versions = store.list()
    misplaced = Queue(QUEUE_RECOMMEND, connection=service.admin, serializer=JSONSerializer).enqueue(
        jobs.RETRAIN, kwargs={"params": {"steps": 5}, "force": True}
    )

    with pytest.raises(JobFailed, match="refused to run 'worker.jobs.retrain' from queue 'recommend'"):
        service.client.wait([misplaced], timeout=TIMEOUT)
    served = service.client.recommend(["after-retrain"], wait=True, timeout=TIMEOUT)

    assert served[0]["user_id"] == "after-retrain"
    assert reason(service.admin, misplaced.id)[1].endswith("it runs only on 'retrain'")
    assert store.list() == versions and store.production() == service.store.version
    assert_nothing_left(service.admin, QUEUE_RECOMMEND)


def test_a_recommend_job_on_the_retrain_queue_fails_and_the_trainer_takes_the_next_retrain(service: Service) -> None:
    misplaced = plant(service.admin, QUEUE_RETRAIN, {"user_ids": ["on-retrain"]})

    retrain = service.client.retrain(params={"steps": 5}, ratings="ratings.csv", wait=True, timeout=120)

    assert reason(service.admin, misplaced) == (
        JobStatus.FAILED,
        "bookrec.worker.serve.rq_worker.JobNotAllowed: refused to run 'worker.jobs.recommend' from queue "
        "'retrain': it runs only on 'recommend' or 'refresh'",
    )
    assert retrain["decision"]["no_new_ratings"] is True  # the trainer served the retrain behind it
    assert service.admin.get(KEYS.recs("on-retrain")) is None
    assert_nothing_left(service.admin, QUEUE_RETRAIN)


def test_a_thousand_rejected_huge_ids_make_a_small_result(service: Service) -> None:
    bad = [f"{i} {'x' * 100_000}" for i in range(999)]  # 100 KB each, refused for the space
    job = Queue(QUEUE_RECOMMEND, connection=service.admin, serializer=JSONSerializer).enqueue(
        jobs.RECOMMEND, kwargs={"user_ids": [*bad, "good-reader"]}
    )

    result = service.client.wait([job], timeout=TIMEOUT)[0]

    assert result["users"] == 1 and result["rejected_count"] == 999
    assert len(result["rejected"]) == MAX_REJECTED_LISTED
    assert all(len(r["user_id"]) < 100 and len(r["error"]) < 200 for r in result["rejected"])
    stored = sum(len(value) for _, fields in service.admin.xrange(f"rq:results:{job.id}") for value in fields.values())
    assert stored < 20_000  # was 134 MB
    assert service.admin.exists(KEYS.recs("good-reader"))


def test_bookrec_get_of_an_entry_someone_else_wrote_exits_10_with_one_line(service: Service) -> None:
    entry = {"user_id": "intruder", "model_version": "v1", "generated_at": "t", "n": 10, "fallback": None}
    service.admin.set(KEYS.recs("intruder"), json.dumps({**entry, "items": [{"title": "x"}]}))  # once a KeyError

    done = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "get", "intruder"],
        env=service.store.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert done.returncode == 10 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "bookrec: error: bookrec:recs:intruder is not a bookrec entry: item 0 has no book_id, score, authors, year, "
        "image_url; a new request for the reader replaces it"
    ]


def test_an_oversized_entry_is_refused_after_reading_at_most_the_cap(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        admin = redis.Redis.from_url(server.url())
        admin.set(KEYS.recs("big"), b"x" * 55_000_000)
        client = Client(redis_url=server.url(), settings=Settings())
        client.status()  # connect first, so only the read is counted
        sent_before = int(admin.info("stats")["total_net_output_bytes"])

        with pytest.raises(MalformedEntry, match="longer than 1,000,000 bytes"):
            client.get("big")

        sent = int(admin.info("stats")["total_net_output_bytes"]) - sent_before
        assert MAX_ENTRY_BYTES < sent < MAX_ENTRY_BYTES + 100_000  # the cap, not the 55 MB
    finally:
        server.stop()
