"""The ratings store down under a real `bookrec ingest`: a private PostgreSQL cluster (tests/integration/
postgres_server.py, initdb and pg_ctl) that is not yet up when the ingest starts, or is stopped with `pg_ctl stop -m
immediate` (a crash) while a producer keeps sending. The ingest logs each retry (its growing pause, the URL with the
password hidden, the error), acknowledges nothing meanwhile (the events wait in the stream) and, once PostgreSQL is
back, applies every event: the store then equals the reference model of tests/integration/test_ingest_mixed_events.py
and each bad event is in the dead stream once. Skipped with the reason when pg_ctl is absent."""

from __future__ import annotations

import re
import threading
import time
from typing import Iterator

import pytest
import redis

from bookrec.bench.ingest_mix import Fields, IngestProcess, Mix, generate
from bookrec.ingest.consumer import GROUP
from bookrec.ratings.store import stream_id_key
from bookrec.shared.keys import Keys
from tests.conftest import TEST_REDIS_URL
from tests.integration.postgres_server import PostgresServer, unavailable
from tests.integration.test_ingest_mixed_events import expected_live
from tests.integration.test_ingest_process import group_exists, live, start_ingest, wait_for  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
KEYS = Keys()
STREAM, DEAD = KEYS.ratings_stream, KEYS.ratings_dead
PASSWORD = "pg-s3cret"  # trust auth accepts and ignores it; it must never reach the log


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A private cluster, made but not started; removed at the end."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """The private cluster's database, with a password in the URL (what start_ingest's processes use)."""
    return postgres.url(password=PASSWORD)


class Producer(threading.Thread):
    """XADDs `entries` one at a time, `pause` seconds apart, from a thread; `sent` holds the stream ids so far."""

    def __init__(self, client: redis.Redis, entries: list[Fields], pause: float) -> None:
        super().__init__(daemon=True)
        self.client, self.entries, self.pause = client, entries, pause
        self.sent: list[str] = []

    def run(self) -> None:
        for fields in self.entries:
            self.sent.append(self.client.xadd(STREAM, fields).decode())
            time.sleep(self.pause)


def entries(mix: Mix) -> list[Fields]:
    """The mix's first round: every event once and some re-sent (the second round is test_ingest_mixed_events')."""
    return [fields for _, fields in mix.rounds[0]]


def pauses(ingest: IngestProcess, what: str) -> list[str]:
    """The delays the ingest's log announced after `what` (e.g. "ingest paused"), in order."""
    return re.findall(rf"{what}: .*; retrying in ([0-9.]+) s", ingest.log.read_text(errors="replace"))


def acknowledged(client: redis.Redis, ids: list[str]) -> list[str]:
    """The ids among `ids` the group has delivered and no longer holds pending."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    delivered = stream_id_key(group["last-delivered-id"].decode())
    pending = {p["message_id"].decode() for p in client.xpending_range(STREAM, GROUP, "-", "+", 100_000)}
    return [i for i in ids if stream_id_key(i) <= delivered and i not in pending]


def drained(client: redis.Redis, last: str) -> bool:
    """Whether the group has delivered everything up to `last` and holds nothing pending."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    return group["last-delivered-id"].decode() == last and group["pending"] == 0


def dead_letters(client: redis.Redis) -> list[tuple[int, str]]:
    """(event seq, reason) of every dead letter, sorted."""
    return sorted((int(f[b"mix_seq"]), f[b"reason"].decode()) for _, f in client.xrange(DEAD))


def bad_events(mix: Mix) -> list[tuple[int, str]]:
    """(seq, reason) the mix's bad events must be dead-lettered with, once each."""
    return [(e.seq, e.bad.reason) for e in mix.events if e.bad]


def assert_logged_without_the_password(ingest: IngestProcess, postgres: PostgresServer) -> None:
    log = ingest.log.read_text(errors="replace")
    assert f"ratings store at postgresql+psycopg://postgres:***@127.0.0.1:{postgres.port}/postgres failed" in log
    assert PASSWORD not in log


def test_an_ingest_started_while_postgresql_is_down_waits_saying_so_then_applies_everything(
    redis_client: redis.Redis,
    postgres: PostgresServer,
    database: str,
    start_ingest,  # noqa: F811
) -> None:
    mix = generate(300)
    with redis_client.pipeline(transaction=False) as pipe:
        for fields in entries(mix):
            pipe.xadd(STREAM, fields)
        last = pipe.execute()[-1].decode()

    ingest = start_ingest()
    wait_for(lambda: len(pauses(ingest, "ingest cannot start yet")) >= 2, "two retries while the store is down")
    assert pauses(ingest, "ingest cannot start yet")[:2] == ["0.5", "1.0"], "the pause doubles"
    assert_logged_without_the_password(ingest, postgres)
    assert "Connection refused" in ingest.log.read_text()
    assert ingest.exit_code() is None, "it waits instead of exiting"
    assert redis_client.xlen(STREAM) == len(entries(mix)) and not group_exists(redis_client), "all wait, unread"

    postgres.start()
    wait_for(lambda: group_exists(redis_client) and drained(redis_client, last), "the events to be ingested")

    assert live(database) == expected_live(mix)
    assert dead_letters(redis_client) == bad_events(mix)
    assert ingest.stop(15) == 0, "SIGTERM stops it cleanly"


def test_postgresql_stopped_while_events_flow_loses_nothing_and_the_ingest_carries_on(
    redis_client: redis.Redis,
    postgres: PostgresServer,
    database: str,
    start_ingest,  # noqa: F811
) -> None:
    postgres.start()
    mix = generate(300)
    ingest = start_ingest()
    wait_for(lambda: group_exists(redis_client), "the ingest to start")
    producer = Producer(redis.Redis.from_url(TEST_REDIS_URL), entries(mix), pause=0.003)
    producer.start()
    third = len(producer.entries) // 3
    wait_for(lambda: len(producer.sent) >= third and live(database), "a third sent and some applied")

    postgres.stop("immediate")  # a crash: no checkpoint; what was committed must come back from the WAL
    at_stop = len(producer.sent)
    wait_for(lambda: len(pauses(ingest, "ingest paused")) >= 2, "the ingest to retry twice")
    producer.join(30)
    after = producer.sent[at_stop:]
    assert len(after) > third, "the producer kept sending while PostgreSQL was down"
    assert acknowledged(redis_client, after) == [], "nothing sent after the stop is acknowledged while it is down"
    assert pauses(ingest, "ingest paused")[:2] == ["0.5", "1.0"], "the pause doubles"
    assert_logged_without_the_password(ingest, postgres)

    postgres.start()
    wait_for(lambda: drained(redis_client, producer.sent[-1]), "every event to be ingested once it is back")

    assert live(database) == expected_live(mix), "every event in the store: none acknowledged was lost"
    assert dead_letters(redis_client) == bad_events(mix)
    assert ingest.stop(15) == 0, "the same process carried on and stops cleanly"
