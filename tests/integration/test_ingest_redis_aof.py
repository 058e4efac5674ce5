"""The stream's Redis crashing under the ingest: a private `redis-server --appendonly yes --appendfsync always`
(tests/integration/redis_server.py) SIGKILLed and started again in the same directory, once with events waiting
while no ingest runs and once in the middle of an ingest's work. Every entry Redis acknowledged survives the crash
in its AOF, the consumer group and its pending entries too, and is ingested after it: the store equals the
reference model of tests/integration/test_ingest_mixed_events.py and each bad event is dead-lettered with its
reason. (Without persistence a restart comes back empty and loses what was not ingested yet: README, Ingest.)"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import redis

from bookrec.bench.ingest_mix import Fields, generate
from bookrec.ingest.consumer import GROUP
from tests.integration.redis_server import RedisServer
from tests.integration.test_ingest_mixed_events import expected_live
from tests.integration.test_ingest_process import database, group_exists, live, start_ingest, wait_for  # noqa: F401
from tests.integration.test_ingest_store_down import STREAM, bad_events, dead_letters, drained, entries

pytestmark = pytest.mark.integration
AOF = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server writing every command to its AOF before answering, in a directory of its own."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir, AOF)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def send(client: redis.Redis, batch: list[Fields]) -> str:
    """XADD `batch` in one pipeline; the last stream id."""
    with client.pipeline(transaction=False) as pipe:
        for fields in batch:
            pipe.xadd(STREAM, fields)
        return pipe.execute()[-1].decode()


def waiting(client: redis.Redis) -> int:
    """Entries the group holds pending or has not delivered yet."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    lag = group["lag"]
    if lag is None:  # Redis cannot tell it after a trim; count the entries past the last delivered one
        lag = len(client.xrange(STREAM, "(" + group["last-delivered-id"].decode(), "+"))
    return int(group["pending"]) + int(lag)


def test_events_sent_while_no_ingest_runs_survive_a_redis_crash_and_are_ingested_after_it(
    aof_redis: RedisServer,
    start_ingest,  # noqa: F811
    database: str,  # noqa: F811
) -> None:
    client = redis.Redis.from_url(aof_redis.url())
    mix = generate(300)
    sent = entries(mix)
    half = len(sent) // 2
    first = start_ingest(aof_redis.url())
    wait_for(lambda: group_exists(client), "the ingest to start")
    last = send(client, sent[:half])
    wait_for(lambda: drained(client, last), "the first half to be ingested")
    assert first.stop(15) == 0
    last = send(client, sent[half:])  # nobody reads these

    aof_redis.kill()
    aof_redis.start()

    assert waiting(client) == len(sent) - half, "the group and the unread entries came back from the AOF"
    second = start_ingest(aof_redis.url())
    wait_for(lambda: drained(client, last), "the second half to be ingested after the restart")
    assert live(database) == expected_live(mix)
    assert dead_letters(client) == bad_events(mix)
    assert second.stop(15) == 0


def test_redis_crashing_mid_ingest_comes_back_from_its_aof_and_the_ingest_carries_on(
    aof_redis: RedisServer,
    start_ingest,  # noqa: F811
    database: str,  # noqa: F811
) -> None:
    client = redis.Redis.from_url(aof_redis.url())
    mix = generate(2000)
    sent = entries(mix)
    half = len(sent) // 2
    ingest = start_ingest(aof_redis.url())
    wait_for(lambda: group_exists(client), "the ingest to start")

    send(client, sent[:half])  # a burst the ingest is still working through when Redis dies
    aof_redis.kill()
    aof_redis.start()
    behind = waiting(client)
    last = send(client, sent[half:])
    wait_for(lambda: drained(client, last), "every entry to be ingested after the restart")

    assert behind > 0, "the crash caught the ingest with entries not yet acknowledged"
    assert ingest.exit_code() is None, "the same process rode it out"
    assert live(database) == expected_live(mix)
    assert dead_letters(client) == bad_events(mix), "each bad event dead-lettered once, even a batch's in flight"
    assert ingest.stop(15) == 0
