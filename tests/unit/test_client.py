"""bookrec.producer.Client: light to import, JSON jobs of at most 1,000 users, nothing enqueued on bad input, one retrain at a time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import fakeredis
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

import bookrec.producer.client
from bookrec.producer import Client
from bookrec.shared.errors import RedisUnavailable, RetrainRunning, ValidationError
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KEYS = Keys()


@pytest.fixture
def redis(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    """The fakeredis every Client built in the test talks to."""
    fake = fakeredis.FakeRedis()
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: fake)
    return fake


@pytest.fixture
def client(redis: fakeredis.FakeRedis) -> Client:
    return Client(settings=Settings(retrain_lock_ttl=600))


def job_data(redis: fakeredis.FakeRedis, job_id: str) -> list:
    """The stored (func, instance, args, kwargs) of a job, decoded as JSON (RQ zlib-compresses it)."""
    return json.loads(zlib.decompress(redis.hget(f"rq:job:{job_id}", "data")))


def enqueued_jobs(redis: fakeredis.FakeRedis) -> list[bytes]:
    return list(redis.scan_iter(match="rq:job:*"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_importing_the_client_is_fast_and_loads_nothing_of_the_worker_side() -> None:
    check = (
        "import time,sys; t=time.perf_counter(); from bookrec.producer import Client; s=time.perf_counter()-t; "
        "print(s); print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow','keras','pandas','matplotlib','numpy'})) or '-')"
    )

    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True)

    seconds, heavy = result.stdout.split()
    print(f"import bookrec.producer: {float(seconds) * 1000:.0f} ms")  # reported with pytest -s
    assert heavy == "-", f"importing the client loaded {heavy}"
    assert float(seconds) < 1.0


def test_recommend_splits_users_into_json_jobs_of_at_most_1000(client: Client, redis: fakeredis.FakeRedis) -> None:
    users = list(range(2500))

    jobs = client.recommend(users, n=7)

    assert Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer).count == 3
    stored = [job_data(redis, job.id) for job in jobs]
    assert [len(kwargs["user_ids"]) for _, _, _, kwargs in stored] == [1000, 1000, 500]
    assert [u for _, _, _, kwargs in stored for u in kwargs["user_ids"]] == [str(u) for u in users]
    assert {(func, instance, kwargs["n"]) for func, instance, _, kwargs in stored} == {
        ("worker.jobs.recommend", None, 7)
    }


@pytest.mark.parametrize(
    ("user_ids", "n", "problem"),
    [
        ([1, None, 3], 10, "None"),
        ([1, "a*"], 10, "'a\\*'"),
        ([], 10, "empty"),
        ([1], 0, "n must be"),
        (list(range(100_001)), 10, "100001 user ids"),
    ],
    ids=["None-id", "glob-id", "empty", "n=0", "too-many"],
)
def test_invalid_request_is_rejected_whole_and_nothing_is_enqueued(
    client: Client, redis: fakeredis.FakeRedis, user_ids, n, problem
) -> None:
    with pytest.raises(ValidationError, match=problem):
        client.recommend(user_ids, n=n)

    assert enqueued_jobs(redis) == []


def test_get_returns_none_without_an_entry(client: Client) -> None:
    assert client.get(5) is None


def test_get_returns_the_entry_and_whether_production_computed_it(client: Client, redis: fakeredis.FakeRedis) -> None:
    entry = {
        "user_id": 5,
        "model_version": "v1",
        "generated_at": "2026-11-28T04:15:00.000000Z",
        "n": 1,
        "fallback": None,
        "items": [{"book_id": 9, "score": 1.5, "title": "T", "authors": "A", "year": 2000, "image_url": None}],
    }
    redis.set(KEYS.recs("5"), json.dumps(entry))
    redis.set(KEYS.model_current, "v1")

    current = client.get("5")
    redis.set(KEYS.model_current, "v2")
    stale = client.get(5)

    assert (current.entry, current.is_current, current.items) == (entry, True, entry["items"])
    assert (stale.entry, stale.is_current) == (entry, False)


def test_a_second_retrain_is_refused_naming_the_running_job(client: Client, redis: fakeredis.FakeRedis) -> None:
    first = client.retrain(model="mf")

    with pytest.raises(RetrainRunning, match=first.id) as raised:
        Client(settings=client.settings).retrain()

    assert raised.value.job_id == first.id
    assert Queue(QUEUE_RETRAIN, connection=redis, serializer=JSONSerializer).job_ids == [first.id]
    assert 0 < redis.ttl(KEYS.retrain_lock) <= 600
    assert job_data(redis, first.id)[3]["model"] == "mf"


def test_a_retrain_can_be_enqueued_once_the_lock_is_released(client: Client, redis: fakeredis.FakeRedis) -> None:
    first = client.retrain()
    redis.delete(KEYS.retrain_lock)  # what the retrain job does when it ends

    second = client.retrain()

    assert second.id != first.id
    assert redis.get(KEYS.retrain_lock).decode() == second.id


def test_promote_moves_production_and_schedules_a_refresh(redis: fakeredis.FakeRedis, fresh_store) -> None:
    client = Client(settings=Settings(model_store=fresh_store.store))

    event = client.promote(fresh_store.version)

    assert redis.get(KEYS.model_current).decode() == fresh_store.version
    assert (event["event"], event["version"]) == ("model_promoted", fresh_store.version)
    refresh_queue = Queue(QUEUE_REFRESH, connection=redis, serializer=JSONSerializer)
    assert refresh_queue.job_ids == [event["refresh_job"]]
    assert job_data(redis, event["refresh_job"])[0] == "worker.jobs.refresh"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.recommend([1]),
        lambda c: c.get(1),
        lambda c: c.retrain(),
        lambda c: c.status(),
        lambda c: c.refresh(),
    ],
    ids=["recommend", "get", "retrain", "status", "refresh"],
)
def test_redis_down_raises_redis_unavailable_without_the_password(call) -> None:
    port = closed_port()
    client = Client(redis_url=f"redis://:s3cret@127.0.0.1:{port}/0", settings=Settings())

    with pytest.raises(RedisUnavailable) as raised:
        call(client)

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "s3cret" not in str(raised.value)
