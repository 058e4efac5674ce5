"""Redis refusing writes and the truth in `status`, on fakeredis: which errors are refusals and what they say, the
status' write probe and worker liveness, and a refresh that can no longer finish. The real thing (a private
redis-server under maxmemory, real workers frozen, killed and flushed) is tests/integration/test_redis_refusing.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import fakeredis
import pytest
import redis
from rq import Queue
from rq.utils import utcformat
from rq.worker import Worker

import bookrec.producer.client
from bookrec.producer import Client
from bookrec.producer.client import DEAD_AFTER_S, UNRESPONSIVE_AFTER_S
from bookrec.shared.errors import RedisUnavailable, RefreshIncomplete
from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.shared.redis_conn import refuses_writes, refusing
from bookrec.shared.settings import Settings

KEYS = Keys()
OOM = "command not allowed when used memory > 'maxmemory'."
MISCONF = "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."


@pytest.mark.parametrize(
    "error, fix",
    [
        (redis.exceptions.OutOfMemoryError(OOM), "raise its maxmemory"),
        (redis.exceptions.OutOfMemoryError(f"Command # 1 (SET a 1) of pipeline caused error: {OOM}"), "maxmemory"),
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "at the primary"),
        (redis.exceptions.ResponseError(MISCONF), "stop-writes-on-bgsave-error"),
        (redis.exceptions.ResponseError(f"Command # 2 (HSET h f v) of pipeline caused error: {MISCONF}"), "snapshot"),
    ],
    ids=["OOM", "OOM in a pipeline", "READONLY", "MISCONF", "MISCONF in a pipeline"],
)
def test_a_refused_write_is_one_error_naming_redis_reason_and_the_fix(error: Exception, fix: str) -> None:
    settings = Settings(redis_url="redis://:s3cret@redis.example:6379/0")
    assert refuses_writes(error)

    refused = refusing(settings, error)

    assert isinstance(refused, RedisUnavailable) and refused.exit_code == 4
    message = str(refused)
    assert message.startswith("Redis at redis://:***@redis.example:6379/0 refuses writes (")
    assert fix in message and "s3cret" not in message and "pipeline caused error" not in message


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis.exceptions.ResponseError("Command # 1 (SET MISCONF 1) of pipeline caused error: ERR syntax error"),
        redis.exceptions.ConnectionError("Connection refused"),
    ],
    ids=["WRONGTYPE", "MISCONF only in an argument", "connection"],
)
def test_other_errors_are_not_refused_writes(error: Exception) -> None:
    assert not refuses_writes(error)


class RefusingRedis(fakeredis.FakeRedis):
    """A fakeredis that refuses SET as a Redis out of memory under noeviction does."""

    def set(self, *args, **kwargs):
        raise redis.exceptions.OutOfMemoryError(OOM)


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch):
    """Make every Client built in the test talk to the given fakeredis; returns that Client."""

    def install(fake: fakeredis.FakeRedis) -> Client:
        monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: fake)
        return Client(settings=Settings())

    return install


def test_status_says_redis_refuses_writes(use) -> None:
    status = use(RefusingRedis()).status()

    assert status["redis_writes"] == "refused"
    [warning] = [w for w in status["warnings"] if "refuses writes" in w]
    assert "raise its maxmemory" in warning


def register(fake: fakeredis.FakeRedis, name: str, silent_for: float, state: str = "idle") -> None:
    """An RQ worker on the recommend queue whose last heartbeat was `silent_for` seconds ago."""
    worker = Worker([Queue(QUEUE_RECOMMEND, connection=fake)], connection=fake, name=name)
    worker.register_birth()
    beat = datetime.now(timezone.utc) - timedelta(seconds=silent_for)
    fake.hset(worker.key, mapping={"last_heartbeat": utcformat(beat), "state": state})


def test_status_marks_a_late_heartbeat_unresponsive_and_leaves_out_a_silent_worker(use) -> None:
    fake = fakeredis.FakeRedis()
    register(fake, "fresh", 0.5, state="busy")
    register(fake, "late", UNRESPONSIVE_AFTER_S + 2, state="busy")
    register(fake, "gone", DEAD_AFTER_S + 30)

    status = use(fake).status()

    assert status["redis_writes"] == "accepted"
    rows = {w["name"]: w for w in status["workers"]}
    assert sorted(rows) == ["fresh", "late"]
    assert rows["fresh"]["state"] == "busy" and rows["fresh"]["heartbeat_age_s"] < UNRESPONSIVE_AFTER_S
    assert rows["late"]["state"] == "unresponsive" and rows["late"]["heartbeat_age_s"] > UNRESPONSIVE_AFTER_S
    [warning] = [w for w in status["warnings"] if "presumed dead" in w]
    assert "gone" in warning


def test_a_refresh_in_progress_reports_its_counts(use) -> None:
    fake = fakeredis.FakeRedis()
    fake.set(KEYS.refresh_users("r1"), 300)
    fake.set(KEYS.refresh_done("r1"), 120)

    assert use(fake).refresh_counts("r1", 300) == (120, 300)


def test_a_refresh_with_chunks_failed_for_good_ends_naming_the_users_not_refreshed(use) -> None:
    fake = fakeredis.FakeRedis()
    fake.set(KEYS.refresh_users("r1"), 300)
    fake.set(KEYS.refresh_done("r1"), 280)
    fake.set(KEYS.refresh_failed("r1"), 20)

    with pytest.raises(RefreshIncomplete, match="ended with 20 of 300 users not refreshed") as raised:
        use(fake).refresh_counts("r1", 300)
    assert raised.value.exit_code == 6


def test_a_refresh_whose_records_vanished_is_lost_naming_the_users_not_refreshed(use) -> None:
    with pytest.raises(RefreshIncomplete, match=r"was lost with 180 of 300 users not refreshed.*bookrec refresh"):
        use(fakeredis.FakeRedis()).refresh_counts("r1", 300, seen=120)
