"""Faults injected for real into a running service: killed workers, Redis stopped and back empty, damaged model
versions, a retrain that fails or is killed, promotions racing. See docs/faults.md for the table.

The module runs one private `redis-server` (so it can be stopped) and one pool of two serving
worker processes for all its tests; each test leaves them serving the trained version. The
retrain tests add a trainer pool (`--queues retrain`, one process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from bookrec.model_store.store import METADATA, ModelStore
from bookrec.producer import Client
from bookrec.shared import worker_state
from bookrec.shared.errors import CorruptVersion, JobFailed, RedisUnavailable
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings
from tests.conftest import REPO, TrainedStore, WorkerPool, pool_on_private_redis, wait_for
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys()
LOCK_TTL = 10  # seconds: the smallest BOOKREC_RETRAIN_LOCK_TTL, so an orphaned lock expires within the test
RECOVERY_LIMIT = 60.0  # a killed job must be picked up again within this many seconds


@dataclass
class Service:
    """The module's Redis, store, data dir and serving pool."""

    server: RedisServer
    store: TrainedStore
    env: dict[str, str]
    redis: redis.Redis
    pool: WorkerPool
    log: Path

    def client(self) -> Client:
        """A producer Client configured like the workers."""
        return Client(settings=Settings.from_env(self.env))

    def worker_states(self) -> dict[str, dict[str, str]]:
        """{worker name: its published state (version, pid, ...)} of the serving workers."""
        return {state["name"]: state for state in worker_state.read_all(self.redis, KEYS) if state.get("version")}

    def serving_pids(self, version: str) -> set[int]:
        """Pids of the live serving workers that have `version` loaded (a killed one's state lingers up to 15 s)."""
        return {
            int(s["pid"]) for s in self.worker_states().values() if s["version"] == version and alive(int(s["pid"]))
        }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def service(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("faults")
    store = TrainedStore(root / "data", root / "models", trained.version)
    shutil.copytree(trained.data_dir, store.data_dir)
    shutil.copytree(trained.store, store.store)
    server = RedisServer(root)
    with pool_on_private_redis(root, store, server, BOOKREC_RETRAIN_LOCK_TTL=str(LOCK_TTL)) as p:
        yield Service(p.server, store, p.env, p.client, p.pool, p.log)


@pytest.fixture
def serving(service: Service) -> Iterator[Service]:
    """The service, checked to be serving the trained version with two workers before and after the test."""
    service.pool.wait_ready(service.redis, 2, service.store.version, timeout=60)
    yield service
    assert service.redis.get(KEYS.model_current).decode() == service.store.version
    service.pool.wait_ready(service.redis, 2, service.store.version, timeout=60)


@pytest.fixture(scope="module")
def trainer(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    """A `bookrec worker --queues retrain` pool with one process, listening."""
    pool = WorkerPool(
        service.env, queues=QUEUE_RETRAIN, processes=1, log=tmp_path_factory.mktemp("trainer") / "trainer.log"
    )
    try:
        wait_for(lambda: trainer_pids(service.redis), "the trainer to listen on the retrain queue", timeout=90)
        yield pool
    finally:
        pool.stop()


def trainer_pids(client: redis.Redis) -> list[int]:
    return [w.pid for w in Worker.all(queue=Queue(QUEUE_RETRAIN, connection=client)) if w.pid]


def clone_version(store: Path, version: str) -> str:
    """Copy `version` under a fresh id (the copy is a complete, valid version); return the new id."""
    new = ModelStore(store)._new_id()
    shutil.copytree(store / version, store / new)
    metadata = json.loads((store / new / METADATA).read_text())
    (store / new / METADATA).write_text(json.dumps({**metadata, "version": new}))
    return new


class LogWatch:
    """The lines a log file gains from now on."""

    def __init__(self, log: Path) -> None:
        self.log, self.offset = log, log.stat().st_size

    def lines(self, text: str) -> list[str]:
        """New lines holding `text`."""
        with self.log.open("rb") as fh:
            fh.seek(self.offset)
            return [line for line in fh.read().decode(errors="replace").splitlines() if text in line]

    def pids(self, text: str) -> set[int]:
        """Pids of the processes that logged a new line holding `text` (the log format is `name[pid]: message`)."""
        return {int(m.group(1)) for line in self.lines(text) if (m := re.search(r"\[(\d+)\]: ", line))}


def stop_a_busy_worker(client: redis.Redis) -> tuple[int, str, bool]:
    """SIGSTOP serving workers until one is frozen holding a job; return (its pid, that job's id, whether the job had started).

    RQ claims a job in two steps (started registry, then status STARTED): the worker may be frozen between them.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for worker in Worker.all(queue=Queue(QUEUE_RECOMMEND, connection=client), serializer=JSONSerializer):
            os.kill(worker.pid, signal.SIGSTOP)
            job_id = None
            try:
                frozen = Worker.find_by_key(worker.key, connection=client, serializer=JSONSerializer)
                job_id = frozen.get_current_job_id() if frozen is not None else None
            finally:
                if job_id is None:
                    os.kill(worker.pid, signal.SIGCONT)
            if job_id is not None:
                status = Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status()
                return worker.pid, job_id, status == JobStatus.STARTED
        time.sleep(0.01)
    raise AssertionError("no worker was busy with a job")


def test_a_worker_killed_mid_batch_has_its_job_retried_and_is_restarted(serving: Service) -> None:
    client = serving.client()
    users = list(range(1, 20_001))  # 20 jobs of 1,000 users (most are cold-start users: slow jobs, easy to hit)
    jobs = client.recommend(users, n=50)
    old_pids = serving.serving_pids(serving.store.version)

    pid, job_id, started = stop_a_busy_worker(serving.redis)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    killed = Job.fetch(job_id, connection=serving.redis, serializer=JSONSerializer)
    wait_for(
        lambda: killed.get_status(refresh=True) == JobStatus.FINISHED,
        "the killed job to finish on a retry",
        RECOVERY_LIMIT,
    )
    assert time.monotonic() - killed_at < RECOVERY_LIMIT
    killed.refresh()
    assert killed.retries_left == (1 if started else 2)  # Retry(max=2): a try is spent only if the job had started
    client.wait(jobs, timeout=60)
    cached = serving.redis.mget([KEYS.recs(str(u)) for u in users])
    assert [u for u, entry in zip(users, cached) if entry is None] == []
    assert StartedJobRegistry(QUEUE_RECOMMEND, connection=serving.redis, serializer=JSONSerializer).get_job_ids() == []

    def replaced() -> bool:
        live = serving.serving_pids(serving.store.version)
        return pid not in live and len(live) == 2 and bool(live - old_pids)

    wait_for(replaced, "the supervisor to start a new worker in place of the killed one", 60)
    assert pid in old_pids and serving.pool.process.poll() is None


def test_a_worker_killed_while_holding_a_swap_slot_has_it_given_back_by_its_supervisor(serving: Service) -> None:
    name, state = next((n, s) for n, s in serving.worker_states().items() if alive(int(s["pid"])))
    pid = int(state["pid"])
    serving.redis.set(KEYS.swap_slot(0), name, ex=60)  # what the worker holds while it loads a promoted version
    log = LogWatch(serving.log)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: serving.redis.get(KEYS.swap_slot(0)) is None,
        "the supervisor to give back the dead worker's swap slot",
        10,
    )
    assert len(log.lines(f"gave back the swap slot dead worker {name} held")) == 1
    live = lambda: serving.serving_pids(serving.store.version)  # noqa: E731
    wait_for(
        lambda: pid not in live() and len(live()) == 2,
        "the supervisor to start a new worker in place of the killed one",
        60,
    )


def test_redis_stopped_and_back_empty_workers_resume_without_restart(serving: Service) -> None:
    pids = serving.serving_pids(serving.store.version)
    client = serving.client()
    client.recommend([1, 2], wait=True, timeout=30)
    log = LogWatch(serving.log)

    serving.server.stop()
    wait_for(lambda: log.pids("model watcher lost Redis") >= pids, "both workers to notice Redis is gone")
    started = time.monotonic()
    for call in (lambda: client.recommend([3]), lambda: client.get(3), client.status):
        with pytest.raises(RedisUnavailable, match=re.escape(f"Redis at {serving.server.url()} did not answer")):
            call()
    assert time.monotonic() - started < 15  # fail fast: three calls, a few short connection retries each
    cli = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "recommend", "3"],
        env=serving.env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 4 and cli.stdout == ""
    assert cli.stderr.startswith("bookrec: error: Redis at") and len(cli.stderr.strip().splitlines()) == 1

    serving.server.start()  # same port, empty
    wait_for(lambda: serving.redis.get(KEYS.model_current), "a worker to restore the production pointer from the store")
    assert serving.redis.get(KEYS.model_current).decode() == serving.store.version
    entries = client.recommend([3, 4], wait=True, timeout=60)
    assert [e["model_version"] for e in entries] == [serving.store.version] * 2
    wait_for(lambda: serving.serving_pids(serving.store.version) == pids, "the same worker processes to report again")
    assert serving.pool.process.poll() is None and log.lines("restarting") == []
    # `bookrec status` lists them again, and their supervisor could hand their jobs back
    wait_for(lambda: {w["pid"] for w in client.status()["workers"]} == pids, "the workers to register again with RQ")


DAMAGE = {
    "truncated SavedModel": (
        "saved_model/variables/variables.data-00000-of-00001",
        lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    ),
    "broken metadata.json": (METADATA, lambda f: f.write_text(f.read_text()[:100])),
    "half-copied version": ("saved_model/saved_model.pb", lambda f: f.unlink()),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_version_is_never_promoted_nor_loaded(serving: Service, damage: str) -> None:
    store = serving.store.store
    relative, harm = DAMAGE[damage]
    bad = clone_version(store, serving.store.version)
    harm(store / bad / relative)
    client = serving.client()
    log = LogWatch(serving.log)
    named = re.escape(Path(relative).name)

    with pytest.raises(CorruptVersion, match=named):
        client.promote(bad)
    assert ModelStore(store).production() == serving.store.version
    assert serving.redis.get(KEYS.model_current).decode() == serving.store.version

    # Whatever writes the pointer without verifying (an old tool, a hand-typed SET), workers refuse the version.
    serving.redis.set(KEYS.model_current, bad)
    try:
        refused_by = serving.serving_pids(serving.store.version)
        wait_for(
            lambda: log.pids(f"cannot load model {bad}") >= refused_by, "both workers to refuse the damaged version"
        )
        assert all(re.search(named, line) for line in log.lines(f"cannot load model {bad}"))
        entries = client.recommend([5, 6], wait=True, timeout=30)
        assert {e["model_version"] for e in entries} == {serving.store.version}
        assert serving.serving_pids(serving.store.version) == refused_by and log.lines(f"loaded model {bad}") == []
    finally:
        serving.redis.set(KEYS.model_current, serving.store.version)
        shutil.rmtree(store / bad)


def test_two_promotions_at_once_leave_every_worker_on_the_recorded_version(serving: Service) -> None:
    store = serving.store.store
    candidates = [clone_version(store, serving.store.version) for _ in range(2)]
    try:
        for _ in range(5):
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def promote_after_barrier(version: str) -> None:
                client = serving.client()
                barrier.wait()
                try:
                    client.promote(version)
                except BaseException as exc:  # reported below: a thread cannot fail the test itself
                    errors.append(exc)

            threads = [threading.Thread(target=promote_after_barrier, args=(v,)) for v in candidates]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            recorded = ModelStore(store).production()
            assert serving.redis.get(KEYS.model_current).decode() == recorded
            wait_for(
                lambda: serving.serving_pids(recorded) and len(serving.serving_pids(recorded)) == 2,
                f"both workers to serve the recorded version {recorded}",
            )
    finally:
        serving.client().promote(serving.store.version)
        serving.pool.wait_ready(serving.redis, 2, serving.store.version)
        for version in candidates:
            ModelStore(store).delete(version)


def write_bad_data(data_dir: Path) -> None:
    """Files a retrain must refuse: NaN ratings, Latin-1 text, a books file without its columns."""
    ratings = (data_dir / "ratings.csv").read_text().splitlines()
    header, rows = ratings[0], ratings[1:]
    (data_dir / "nan.csv").write_text(
        "\n".join([header, *rows[:50], rows[50].rsplit(",", 1)[0] + ",nan", *rows[51:]]) + "\n"
    )
    (data_dir / "latin1.csv").write_bytes(("\n".join([header, *rows]) + "\nCafé,1,4\n").encode("latin-1"))
    (data_dir / "no_columns_books.csv").write_text("id,name\n1,A book\n")


BAD_DATA = {
    "NaN rating": ({"ratings": "nan.csv"}, "nan.csv", "rating"),
    "non-UTF-8 CSV": ({"ratings": "latin1.csv"}, "latin1.csv", "UTF-8"),
    "books missing columns": (
        {"ratings": "ratings.csv", "books": "no_columns_books.csv"},
        "no_columns_books.csv",
        "book_id",
    ),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_a_retrain_on_bad_data_fails_naming_the_file_and_changes_nothing(
    serving: Service, trainer: WorkerPool, case: str
) -> None:
    write_bad_data(serving.store.data_dir)
    files, name, problem = BAD_DATA[case]
    before = [v["version"] for v in ModelStore(serving.store.store).list()]

    with pytest.raises(JobFailed, match=rf"DataError: .*{name}.*{problem}"):
        serving.client().retrain(params={"steps": 60}, wait=True, timeout=60, **files)

    assert serving.redis.exists(KEYS.retrain_lock) == 0
    assert [v["version"] for v in ModelStore(serving.store.store).list()] == before
    assert ModelStore(serving.store.store).production() == serving.store.version


def test_a_trainer_killed_while_saving_leaves_production_unchanged(serving: Service, trainer: WorkerPool) -> None:
    store = serving.store.store
    before = [v["version"] for v in ModelStore(store).list()]
    client = serving.client()
    job = client.retrain(
        params={"steps": 60}, ratings="ratings.csv", force=True
    )  # the data production was trained on: only forced trains
    [pid] = trainer_pids(serving.redis)

    wait_for(
        lambda: [p for p in store.iterdir() if p.name.startswith(".tmp-v")],
        "the trainer to start writing the new version",
        60,
    )
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(JobFailed, match="AbandonedJobError"):
        client.wait([job], timeout=RECOVERY_LIMIT)
    assert [v["version"] for v in ModelStore(store).list()] == before  # the half-written version is never listed
    assert ModelStore(store).production() == serving.store.version
    assert serving.redis.get(KEYS.model_current).decode() == serving.store.version
    wait_for(lambda: not serving.redis.exists(KEYS.retrain_lock), "the dead trainer's lock to expire", LOCK_TTL + 5)
    wait_for(lambda: [p for p in trainer_pids(serving.redis) if p != pid], "the supervisor to restart the trainer", 60)
    assert StartedJobRegistry(QUEUE_RETRAIN, connection=serving.redis, serializer=JSONSerializer).get_job_ids() == []
