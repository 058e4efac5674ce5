"""A real `bookrec ingest` process against the real Redis and a SQLite file: events XADDed are applied, bad ones
dead-lettered; entries a consumer read and died holding (a real ingest SIGKILLed while its commit waited on the
store's write lock, or a consumer that read them by hand) are claimed by a restarted ingest after
BOOKREC_INGEST_CLAIM_S and applied exactly once; SIGTERM stops it cleanly."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis

from bookrec.bench.ingest_mix import ingest_env
from bookrec.ingest.consumer import GROUP
from bookrec.ratings.store import RatingsStore
from bookrec.shared.keys import Keys
from bookrec.worker.serve.launch import IngestProcess
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration
KEYS = Keys()
STREAM, DEAD = KEYS.ratings_stream, KEYS.ratings_dead


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ratings.db'}"


@pytest.fixture
def start_ingest(database: str, tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    """Start `bookrec ingest` processes on `database` (claim after 1 s, 100 ms blocking reads), on the test Redis or
    `redis_url`, with `settings` added to their environment; kill any left at the end."""
    started: list[IngestProcess] = []

    def start(redis_url: str = TEST_REDIS_URL, **settings: str) -> IngestProcess:
        env = ingest_env(redis_url, database, BOOKREC_INGEST_CLAIM_S="1", BOOKREC_INGEST_BLOCK_MS="100", **settings)
        process = IngestProcess(env, tmp_path / f"ingest-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for ingest in started:
        if ingest.exit_code() is None:
            ingest.process.kill()
            ingest.process.wait(10)


def live(database: str) -> dict[tuple[str, str], float]:
    store = RatingsStore(database)
    try:
        return {(user, book): rating for user, book, rating in store.snapshot().rows}
    finally:
        store.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def group_exists(client: redis.Redis) -> bool:
    return client.exists(STREAM) and any(g["name"] == GROUP.encode() for g in client.xinfo_groups(STREAM))


def acknowledged(client: redis.Redis, stream_id: bytes) -> bool:
    """Whether the group has read up to `stream_id` and has nothing pending."""
    group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    return group["last-delivered-id"] == stream_id and group["pending"] == 0


def test_a_restarted_ingest_claims_a_dead_consumers_entries_and_applies_them_once(
    redis_client: redis.Redis, start_ingest, database: str
) -> None:
    first = start_ingest()
    wait_for(lambda: group_exists(redis_client), "the ingest to create its consumer group")
    redis_client.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "4", "ts": "100"})
    redis_client.xadd(STREAM, {"user_id": "1", "book_id": "11", "rating": "70"})
    wait_for(lambda: live(database) == {("1", "10"): 4.0}, "the first events to be applied")
    wait_for(lambda: redis_client.xlen(DEAD) == 1, "the bad event to be dead-lettered")
    first.process.kill()
    first.process.wait(10)

    redis_client.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "2", "ts": "200", "event_id": "e-1"})
    redis_client.xadd(STREAM, {"user_id": "2", "book_id": "10", "rating": "5"})
    redis_client.xadd(STREAM, {"user_id": "2", "book_id": "bad id", "rating": "5"})
    held = redis_client.xreadgroup(GROUP, "doomed-1", {STREAM: ">"}, count=10)  # read, then it "dies"
    assert len(held[0][1]) == 3
    redis_client.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "1", "ts": "50"})  # older: loses

    second = start_ingest()
    wait_for(lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 0, "the held entries to be claimed and acked")

    assert live(database) == {("1", "10"): 2.0, ("2", "10"): 5.0}
    reasons = [fields[b"reason"] for _, fields in redis_client.xrange(DEAD)]
    assert reasons == [
        b"rating '70' is outside the scale 0.5 to 5",
        b"book_id 'bad id' holds whitespace or glob characters",
    ]
    wait_for(lambda: redis_client.xlen(STREAM) <= 1, "the stream to be trimmed below what the group acknowledged")
    resent = redis_client.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "3", "ts": "300", "event_id": "e-1"})
    wait_for(lambda: acknowledged(redis_client, resent), "the resent event to be acknowledged")
    assert live(database) == {("1", "10"): 2.0, ("2", "10"): 5.0}, "an event_id applied before changes nothing"

    assert second.stop(15) == 0, "SIGTERM stops it cleanly"


def test_an_ingest_killed_between_reading_and_acking_loses_nothing_and_applies_once(
    redis_client: redis.Redis, start_ingest, database: str
) -> None:
    first = start_ingest()
    wait_for(lambda: group_exists(redis_client), "the ingest to create its consumer group")
    lock = sqlite3.connect(database.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the store's write lock: the ingest's commit waits on it
    try:
        batch = redis_client.pipeline(transaction=True)  # all six arrive at once, so one read takes them all
        for book in range(5):
            batch.xadd(STREAM, {"user_id": "7", "book_id": str(book), "rating": "4", "event_id": f"k{book}"})
        batch.xadd(STREAM, {"user_id": "7", "book_id": "9", "rating": "-1"})
        batch.execute()
        wait_for(lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 6, "the ingest to read the batch")
        first.process.kill()  # read, committing, not acknowledged
        first.process.wait(10)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert live(database) == {} and redis_client.xlen(DEAD) == 0

    second = start_ingest()
    wait_for(lambda: redis_client.xpending(STREAM, GROUP)["pending"] == 0, "the killed ingest's entries to be claimed")

    assert live(database) == {("7", str(book)): 4.0 for book in range(5)}
    assert [fields[b"reason"] for _, fields in redis_client.xrange(DEAD)] == [
        b"rating '-1' is outside the scale 0.5 to 5"
    ]
    assert second.stop(15) == 0, "SIGTERM stops it cleanly"
