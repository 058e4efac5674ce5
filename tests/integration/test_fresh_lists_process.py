"""Fresh lists end to end: real `bookrec worker` processes on recommend,fresh,refresh and a real `bookrec ingest` on
a SQLite store, on the real Redis. A rated book leaves the reader's recomputed list (mult-dae and the rating-only mf),
`bookrec rate --wait` prints that list, a burst of 50 events is recomputed once, the delta survives the workers'
restart, a reader who rates books of another planted taste group gets a list that moves toward it (mult-dae), a
worker SIGKILLed with a recompute queued loses nothing, a hot swap keeps what the new version's snapshot
does not cover and a version covering it prunes it, and after FLUSHDB the deltas are rebuilt from the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import pytest
import redis
from rq.job import Job
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import METADATA, ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.shared import delta, worker_state
from bookrec.shared.jobs import FRESH
from bookrec.shared.keys import QUEUE_FRESH, Keys
from bookrec.shared.ratings import stream_id_key
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import IngestProcess
from tests.conftest import PLANTED_GROUPS, REPO, TrainedStore, WorkerPool, planted_tastes, train_tiny
from tests.integration.test_faults import alive, clone_version, wait_for

pytestmark = pytest.mark.integration
KEYS = Keys()
QUEUES = "recommend,fresh,refresh"


@dataclass
class Service:
    """Serving workers and one ingest over one model store and one ratings store."""

    store: TrainedStore
    env: dict[str, str]
    redis: redis.Redis
    pool: WorkerPool
    ingest: IngestProcess
    root: Path

    def client(self) -> Client:
        return Client(settings=Settings.from_env(self.env))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bookrec", *args], env=self.env, cwd=REPO, capture_output=True, text=True
        )

    def entry(self, user: str) -> dict | None:
        cached = self.client().get(user)
        return cached.entry if cached else None

    def books(self, user: str) -> list[str]:
        """The book ids of `user`'s cached list."""
        entry = self.entry(user)
        return [str(item["book_id"]) for item in entry["items"]] if entry else []

    def worker_pids(self) -> list[int]:
        return [int(s["pid"]) for s in worker_state.read_all(self.redis, KEYS) if s.get("version")]

    def committed(self, user: str, stream_id: str) -> bool:
        """Whether the ingest has written `user`'s event `stream_id` (or a newer one) into their delta."""
        through = delta.read(self.redis, KEYS, [user])[0].through
        return through is not None and stream_id_key(through) >= stream_id_key(stream_id)

    def users(self) -> list[str]:
        return ModelStore(self.store.store).metadata(self.store.version)["id_maps"]["users"]


@pytest.fixture
def start_service(redis_client: redis.Redis, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory: promote `store`'s version, start `processes` workers on recommend,fresh,refresh and one ingest."""
    started: list[Service] = []

    def start(store: TrainedStore, processes: int = 2, **extra: str) -> Service:
        env = store.env(
            BOOKREC_DATABASE_URL=f"sqlite:///{tmp_path / 'ratings.db'}",
            BOOKREC_INGEST_BLOCK_MS="100",
            BOOKREC_INGEST_CLAIM_S="1",
            **extra,
        )
        promote(ModelStore(store.store), redis_client, KEYS, store.version)
        pool = WorkerPool(env, QUEUES, processes, log=tmp_path / "workers.log")
        service = Service(store, env, redis_client, pool, IngestProcess(env, tmp_path / "ingest.log"), tmp_path)
        started.append(service)
        pool.wait_ready(redis_client, processes, store.version, timeout=90)
        return service

    yield start
    for service in started:
        service.pool.stop()
        service.ingest.stop(timeout=15)


@pytest.fixture
def kind_store(trained: TrainedStore, tmp_path: Path) -> Callable[[str], TrainedStore]:
    """A factory training a kind on the session's catalogue (only the test that needs it pays)."""

    def make(kind: str) -> TrainedStore:
        version = train_tiny(tmp_path / f"{kind}-models", trained.data_dir, kind=kind)
        return TrainedStore(trained.data_dir, tmp_path / f"{kind}-models", version)

    return make


def item_ids(entry: dict) -> list[str]:
    return [str(item["book_id"]) for item in entry["items"]]


@pytest.mark.parametrize("kind", ["mult-dae", "ease", "mf"])
def test_a_rated_book_leaves_the_recomputed_list_and_rate_wait_prints_it(
    kind: str, fresh_store: TrainedStore, kind_store: Callable[[str], TrainedStore], start_service
) -> None:
    service = start_service(fresh_store if kind == "mult-dae" else kind_store(kind))
    reader = service.users()[0]
    client = service.client()
    (before,) = client.recommend([reader], n=10, wait=True, timeout=60)
    top = item_ids(before)[0]

    done = service.cli("rate", reader, top, "5", "--wait", "--timeout", "60", "--json")

    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["list"]["ratings_through"] == reply["id"] and reply["list"]["model_version"] == service.store.version
    assert top not in item_ids(reply["list"]) and len(reply["list"]["items"]) == 10
    assert top not in service.books(reader)

    popular = item_ids(client.recommend(["a-new-reader"], n=10, wait=True, timeout=60)[0])[0]
    entry = client.rate("another-new-reader", popular, 4, wait=True, timeout=60)
    if kind != "mf":  # history-based: scored from the one book they rated (ease: its row of B)
        assert entry["fallback"] is None, "a reader the model never saw is scored from their first rating"
    else:
        assert entry["fallback"] == "popular", "a rating-only kind keeps a reader it never saw on the fallback"
    assert popular not in item_ids(entry) and len(entry["items"]) == 10


PLANTED_BOOKS_PER_READER = 12
MOVING_READERS = 12  # two of each planted group
MOVED_BOOKS = 12  # each rates this many books of another group: as many as they had read
MOVED_SHARE = 0.3
"""How much the other group's share of the top 10 must rise on average. This test's runs: from 0.01 to 0.65 (each
reader's share 0.3 to 0.9 after). In-process (3 training seeds, 20 sets of 12 readers): from 0.04-0.06 to 0.58-0.66,
no set rising by less than 0.38; with 8 books instead of 12 the rise is 0.2-0.45, with 4 about 0.1. A worker
scoring by user index (the rating-only path) would leave it near 0."""


@pytest.fixture
def planted_store(tmp_path: Path) -> TrainedStore:
    """mult-dae trained on a catalogue of planted taste groups (tests/conftest.py's planted_tastes, 12 books per
    reader), in a store of its own."""
    from bookrec.worker.learn.pipeline import TrainRequest, train_version

    data = tmp_path / "planted"
    data.mkdir()
    ratings = planted_tastes(data / "ratings.csv", per_user=PLANTED_BOOKS_PER_READER)
    request = TrainRequest(ratings=ratings, kind="mult-dae", params={"steps": 300})
    version = train_version(ModelStore(tmp_path / "planted-models"), request)["version"]
    return TrainedStore(data, tmp_path / "planted-models", version)


def group_share(entry: dict, group: int) -> float:
    """The share of `entry`'s books that belong to planted taste group `group`."""
    books = item_ids(entry)
    return sum(int(book) % PLANTED_GROUPS == group for book in books) / len(books)


def test_a_reader_whose_tastes_move_gets_a_list_that_moves_toward_the_new_group(
    planted_store: TrainedStore, start_service
) -> None:
    service = start_service(planted_store)
    client = service.client()
    read = pd.read_csv(planted_store.data_dir / "ratings.csv").groupby("user_id")["book_id"].agg(set)
    before, after = [], []
    for reader in range(MOVING_READERS):
        group = (reader % PLANTED_GROUPS + PLANTED_GROUPS // 2) % PLANTED_GROUPS  # the group farthest from theirs
        (listed,) = client.recommend([str(reader)], n=10, wait=True, timeout=60)
        before.append(group_share(listed, group))
        books = [b for b in range(group, 240, PLANTED_GROUPS) if b not in read[reader]][:MOVED_BOOKS]  # most popular
        client.rate_many([{"user_id": reader, "book_id": book, "rating": 5} for book in books[:-1]])
        entry = client.rate(reader, books[-1], 5, wait=True, timeout=60)
        assert entry["fallback"] is None and not set(item_ids(entry)) & {str(b) for b in books}
        after.append(group_share(entry, group))

    rise = sum(after) / len(after) - sum(before) / len(before)
    assert rise >= MOVED_SHARE, f"the new group's share of the lists went from {before} to {after}"


def fresh_results(client: redis.Redis) -> list[dict]:
    """The results of the finished fresh jobs."""
    registry = FinishedJobRegistry(KEYS.queue(QUEUE_FRESH), connection=client, serializer=JSONSerializer)
    jobs = [Job.fetch(i, connection=client, serializer=JSONSerializer) for i in registry.get_job_ids()]
    return [job.return_value() for job in jobs if job.func_name == FRESH]


def fresh_queue_done(client: redis.Redis) -> bool:
    """Nothing queued or running on the fresh queue."""
    queue = KEYS.queue(QUEUE_FRESH)
    started = StartedJobRegistry(queue, connection=client, serializer=JSONSerializer)
    return client.llen(f"rq:queue:{queue}") == 0 and started.count == 0


def test_a_burst_of_50_events_of_one_reader_is_recomputed_once(fresh_store: TrainedStore, start_service) -> None:
    service = start_service(fresh_store, BOOKREC_INGEST_BATCH="10")
    reader = service.users()[1]
    client = service.client()
    client.recommend([reader], n=10, wait=True, timeout=60)
    pids = service.worker_pids()
    for pid in pids:  # both workers frozen: the recomputes queue up while the ingest commits the burst
        os.kill(pid, signal.SIGSTOP)
    try:
        ids = [client.rate(reader, str(book), 4) for book in range(1000, 1050)]
        wait_for(lambda: service.committed(reader, ids[-1]), "the ingest to commit the 50 events")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    entry = client.wait_rated(reader, ids[-1], timeout=60)
    wait_for(lambda: fresh_queue_done(service.redis), "every fresh job to end")

    results = fresh_results(service.redis)
    assert len(results) == 1, "five commits while a fresh job was queued asked for no other"
    assert sum(r["recomputed"] for r in results) == 1, results
    assert entry["ratings_through"] == ids[-1]


def test_the_delta_survives_a_restart_and_a_worker_killed_with_a_recompute_queued_loses_nothing(
    fresh_store: TrainedStore, start_service
) -> None:
    service = start_service(fresh_store, processes=1)
    reader = service.users()[2]
    client = service.client()
    first = item_ids(client.recommend([reader], n=10, wait=True, timeout=60)[0])[0]
    client.rate(reader, first, 5, wait=True, timeout=60)

    service.pool.stop()  # every worker gone; their successors hold nothing but the version
    service.pool = WorkerPool(service.env, QUEUES, 1, log=service.root / "workers-again.log")
    service.pool.wait_ready(service.redis, 1, service.store.version, timeout=90)
    again = client.recommend([reader], n=10, wait=True, timeout=60)[0]
    assert first not in item_ids(again), "the restarted worker read the delta from Redis"

    (pid,) = service.worker_pids()
    second = item_ids(again)[0]
    os.kill(pid, signal.SIGSTOP)
    stream_id = client.rate(reader, second, 5)
    wait_for(lambda: service.committed(reader, stream_id), "the ingest to commit the rating")
    os.kill(pid, signal.SIGKILL)  # its recompute is queued (or popped by the frozen worker, never run)

    entry = client.wait_rated(reader, stream_id, timeout=90)
    assert first not in item_ids(entry) and second not in item_ids(entry)
    assert not alive(pid) and any(other != pid and alive(other) for other in service.worker_pids()), "restarted"


def with_snapshot(store: Path, version: str, newest_updated_at: float) -> str:
    """A copy of `version` whose metadata says it was trained on a store snapshot whose newest row was written at
    `newest_updated_at` (what a retrain on the store records)."""
    new = clone_version(store, version)
    path = store / new / METADATA
    metadata = json.loads(path.read_text())
    snapshot = {"source": "store", "rows": 0, "newest_updated_at": newest_updated_at, "last_stream_id": None}
    path.write_text(json.dumps({**metadata, "snapshot": snapshot}))
    return new


def test_a_swap_keeps_what_the_new_snapshot_misses_and_a_version_covering_it_prunes_it(
    fresh_store: TrainedStore, start_service
) -> None:
    service = start_service(fresh_store)
    reader = service.users()[3]
    client = service.client()
    top = item_ids(client.recommend([reader], n=10, wait=True, timeout=60)[0])[0]
    before_rating = time.time()
    client.rate(reader, top, 5, wait=True, timeout=60)

    older = with_snapshot(service.store.store, service.store.version, before_rating - 300)
    settings = Settings.from_env(service.env)
    promote(ModelStore(service.store.store), service.redis, KEYS, older, refresh=settings)  # a refresh of every list
    wait_for(lambda: (service.entry(reader) or {}).get("model_version") == older, "the refresh on the new version")
    assert top not in service.books(reader), "the new version's lists include what its snapshot does not cover"
    wait_for(lambda: service.redis.get(KEYS.delta_pruned) == older.encode(), "the ingest to prune for it", 60)
    assert delta.read(service.redis, KEYS, [reader])[0].rated == (top,), "nothing it covers: the delta is kept"

    covering = with_snapshot(service.store.store, service.store.version, time.time() + 120)
    promote(ModelStore(service.store.store), service.redis, KEYS, covering, refresh=settings)
    wait_for(lambda: service.redis.get(KEYS.delta_pruned) == covering.encode(), "the ingest to prune for it", 60)
    assert not service.redis.exists(KEYS.delta(reader)), "a version whose snapshot covers the rating prunes it"


def test_after_flushdb_the_deltas_are_rebuilt_from_the_store_and_the_lists_recomputed(
    fresh_store: TrainedStore, start_service, tmp_path: Path
) -> None:
    service = start_service(fresh_store)
    reader = service.users()[4]
    client = service.client()
    top = item_ids(client.recommend([reader], n=10, wait=True, timeout=60)[0])[0]
    client.rate(reader, top, 5, wait=True, timeout=60)
    client.unrate(reader, "no-such-book", wait=True, timeout=60)

    service.redis.flushdb()

    wait_for(lambda: service.redis.exists(KEYS.delta(reader)), "the ingest to rebuild the deltas", 60)
    wait_for(lambda: service.entry(reader) is not None, "the rebuilt reader's list to be recomputed", 60)
    store = RatingsStore(service.env["BOOKREC_DATABASE_URL"])
    try:
        last = store.last_stream_id()
    finally:
        store.close()
    entry = service.entry(reader)
    assert top not in item_ids(entry) and entry["ratings_through"] == last
    rebuilt = delta.read(service.redis, KEYS, [reader])[0]
    assert (rebuilt.rated, rebuilt.removed) == ((top,), ("no-such-book",))
    assert "rebuilt the deltas of" in (tmp_path / "ingest.log").read_text()
