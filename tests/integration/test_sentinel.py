"""Redis Sentinel for real: a master, two replicas and three sentinels on free ports, two serving workers and an
ingest connected through the sentinels (BOOKREC_REDIS_SENTINELS; the URL's host is unreachable on purpose, so
nothing can connect to Redis but through Sentinel), and producer Clients sending recommend requests and rating
events with BOOKREC_REDIS_WAIT_REPLICAS=1. The master is killed with SIGKILL mid-stream.

What a user relies on: workers, ingest and clients follow the failover by themselves (no process restarted); every
request a client sent is served: a send that failed is sent again by the client (it got an error, so it knows),
and every send that was acknowledged finishes, recovered on the new master (WAIT put it on a replica first); every
rating event acknowledged before, during or after the kill is in the ratings store afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import NotReplicated, RedisUnavailable
from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import connect
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import IngestProcess
from tests.conftest import TEST_REDIS_URL, TrainedStore, WorkerPool, wait_for
from tests.integration.redis_server import SentinelGroup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = Keys()
UNREACHABLE_URL = "redis://unreachable.invalid:1/0"  # Sentinel names the host; the URL gives only the database


@dataclass
class Sender:
    """A client thread sending one call after another; a call that raises is sent again, unchanged, until it is
    acknowledged. `acked` holds what each acknowledged call returned, with when."""

    call: Callable[[int], object]
    pause: float
    acked: list[tuple[float, int, object]] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        number = 0
        while not self.stop.is_set():
            try:
                result = self.call(number)
            except RedisUnavailable:
                self.failures.append(time.monotonic())
                self.stop.wait(0.05)  # the client's own pacing of a re-send
                continue
            self.acked.append((time.monotonic(), number, result))
            number += 1
            self.stop.wait(self.pause)

    def acked_after(self, moment: float) -> int:
        return sum(1 for at, _, _ in self.acked if at > moment)

    def outage(self) -> float | None:
        """Seconds from the first failed call to the first acknowledged call after it (None: nothing failed)."""
        if not self.failures:
            return None
        first = self.failures[0]
        return min(at for at, _, _ in self.acked if at > first) - first

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def test_a_killed_master_fails_over_and_nothing_sent_or_acknowledged_is_lost(
    sentinels: SentinelGroup, fresh_store: TrainedStore, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'ratings.db'}"
    env = fresh_store.env(
        UNREACHABLE_URL,
        BOOKREC_REDIS_SENTINELS=sentinels.addresses,
        BOOKREC_REDIS_SENTINEL_MASTER=SentinelGroup.MASTER,
        BOOKREC_REDIS_WAIT_REPLICAS="1",
        BOOKREC_DATABASE_URL=database,
        BOOKREC_INGEST_BLOCK_MS="100",
        BOOKREC_INGEST_CLAIM_S="1",
    )
    settings = Settings.from_env(env)
    admin = connect(settings)
    promote(ModelStore(fresh_store.store), admin, KEYS, fresh_store.version)
    metadata = ModelStore(fresh_store.store).metadata(fresh_store.version)
    users, books = metadata["id_maps"]["users"], metadata["id_maps"]["items"]
    pool = WorkerPool(env, "recommend,fresh,refresh", 2, log=tmp_path / "workers.log")
    ingest = IngestProcess(env, tmp_path / "ingest.log")
    requests = ratings = None
    try:
        pool.wait_ready(admin, 2, fresh_store.version, timeout=90)
        client = Client(settings=settings)
        requests = Sender(lambda i: client.recommend([users[i % len(users)]])[0].id, pause=0.02)
        # Each event rates its own (reader, book) pair, so the store must end with every acknowledged one as sent.
        pairs = [(u, b) for b in books for u in users]

        def rate(i: int) -> tuple[str, str, float]:
            user, book = pairs[i]
            stars = float(1 + i % 5)
            client.rate(user, book, stars, event_id=f"sentinel-{i}")
            return (user, book, stars)

        ratings = Sender(rate, pause=0.01)
        wait_for(lambda: len(requests.acked) >= 20 and len(ratings.acked) >= 50, "the streams to run", 60)

        old_master = sentinels.master.port
        killed_at = time.monotonic()
        sentinels.master.kill()
        wait_for(lambda: sentinels.master_port() not in (None, old_master), "the sentinels to promote a replica", 60)
        failed_over = time.monotonic() - killed_at
        wait_for(
            lambda: (
                requests.acked_after(killed_at + failed_over) >= 20
                and ratings.acked_after(killed_at + failed_over) >= 50
            ),
            "clients to be served by the new master",
            60,
        )
    finally:
        for sender in (requests, ratings):
            if sender is not None:
                sender.finish()

    try:
        assert requests.failures and ratings.failures, "the kill was not felt: the test proves nothing"

        # What a caller of recommend(wait=True) waits on: every acknowledged request's successful result.
        acked_jobs = [Job(job_id, connection=admin, serializer=JSONSerializer) for _, _, job_id in requests.acked]
        Client(settings=settings, connection=admin).wait(acked_jobs, timeout=120)

        store = RatingsStore(database)
        sent = {(user, book): stars for _, _, (user, book, stars) in ratings.acked}

        def missing() -> dict:
            stored = {(row[0], row[1]): row[2] for row in store.snapshot().rows}
            return {pair: stars for pair, stars in sent.items() if stored.get(pair) != stars}

        wait_for(lambda: not missing(), "every acknowledged rating event to reach the ratings store", 60)
        store.close()
        assert pool.exit_code() is None and ingest.exit_code() is None, "a process gave up instead of following"
        # The CLI, a fresh process, finds the new master through the sentinels too.
        status = subprocess.run(
            [sys.executable, "-m", "bookrec", "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        reported = json.loads(status.stdout)
        assert reported["production_version"] == fresh_store.version
        assert reported["redis"].startswith(f"sentinel master '{SentinelGroup.MASTER}' at {sentinels.addresses}")
        print(
            f"\nsentinel failover: promoted {failed_over:.2f} s after the kill; outage (first failed call to the "
            f"next acknowledged one): requests {requests.outage():.2f} s, rating events {ratings.outage():.2f} s; "
            f"{len(requests.acked)} requests ({len(requests.failures)} failed sends re-sent), "
            f"{len(ratings.acked)} rating events ({len(ratings.failures)} re-sent)"
        )
    finally:
        pool.stop()
        ingest.stop(timeout=15)


def test_a_write_no_replica_confirms_in_time_is_refused_so_the_sender_sends_it_again(redis_client) -> None:
    """The test Redis has no replica: with BOOKREC_REDIS_WAIT_REPLICAS=1 every write is reported as not safe."""
    waiting = Client(settings=Settings(redis_url=TEST_REDIS_URL, redis_wait_replicas=1, redis_wait_ms=50))
    with pytest.raises(NotReplicated, match="only 0 of the 1 replicas .* confirmed within 50 ms"):
        waiting.rate("7", "12", 4.0)
    with pytest.raises(NotReplicated, match="1 recommend job"):
        waiting.recommend(["7"])
    assert Client(settings=Settings(redis_url=TEST_REDIS_URL)).rate("7", "12", 4.0)  # the default waits for none
