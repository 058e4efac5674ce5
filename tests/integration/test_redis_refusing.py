"""Redis refusing writes, and a `status` that tells the truth, under real worker processes on a private redis-server.

The module runs one private `redis-server` (so it can be limited, flushed and frozen at will) and one
pool of two serving worker processes; each test leaves them serving the trained version with Redis
accepting writes. Refusal is injected as in production: `CONFIG SET maxmemory` with the
`noeviction` policy, below what Redis already holds, so every write command is refused (OOM).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.producer.client import UNRESPONSIVE_AFTER_S
from bookrec.shared import worker_state
from bookrec.shared.errors import RedisRefusingWrites, RefreshIncomplete
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.rq_worker import HEARTBEAT_SECONDS
from tests.conftest import REPO, TrainedStore, WorkerPool, pool_on_private_redis
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys()
REFRESH_CHUNK = 1  # one user per refresh chunk: a refresh of the 300 readers is 300 jobs, long enough to cut in two
OOM = "command not allowed when used memory > 'maxmemory'"


@dataclass
class Service:
    """The module's Redis, store, environment and serving pool."""

    server: RedisServer
    store: TrainedStore
    env: dict[str, str]
    redis: redis.Redis
    pool: WorkerPool
    log: Path

    def client(self) -> Client:
        """A producer Client configured like the workers."""
        return Client(settings=Settings.from_env(self.env))

    def pids(self) -> set[int]:
        """Pids of the serving workers that report the trained version and are alive."""
        states = worker_state.read_all(self.redis, KEYS)
        return {int(s["pid"]) for s in states if s.get("version") == self.store.version and alive(int(s["pid"]))}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run `bookrec ARGS` in a fresh interpreter with the service's environment."""
        return subprocess.run(
            [sys.executable, "-m", "bookrec.cli", *args], env=self.env, cwd=REPO, capture_output=True, text=True
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0, every: float = 0.05) -> object:
    """Poll `condition` every `every` seconds until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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


@pytest.fixture(scope="module")
def service(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("refusing")
    store = TrainedStore(trained.data_dir, root / "models", trained.version)
    shutil.copytree(trained.store, store.store)
    server = RedisServer(root, extra=("--maxmemory-policy", "noeviction"))
    with pool_on_private_redis(root, store, server, BOOKREC_REFRESH_CHUNK=str(REFRESH_CHUNK)) as p:
        yield Service(p.server, store, p.env, p.client, p.pool, p.log)


@pytest.fixture
def serving(service: Service) -> Iterator[Service]:
    """The service with two workers serving the trained version, before and after the test, Redis accepting writes."""
    wait_for(lambda: len(service.pids()) == 2, "two live workers serving the trained version", 90)
    yield service
    service.redis.config_set("maxmemory", 0)
    wait_for(lambda: len(service.pids()) == 2, "two live workers serving the trained version", 90)


def refuse_writes(client: redis.Redis) -> None:
    """Make Redis refuse every write: a memory limit below what it already holds, under noeviction."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", max(1, used // 2))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "x")


def started_jobs(client: redis.Redis) -> list[str]:
    """Ids in the started registries of the serving queues (a job stuck there would never finish)."""
    return [
        job_id
        for queue in (QUEUE_RECOMMEND, QUEUE_REFRESH)
        for job_id in StartedJobRegistry(queue, connection=client, serializer=JSONSerializer).get_job_ids()
    ]


def test_workers_ride_out_redis_refusing_writes_and_then_serve_every_reader(serving: Service) -> None:
    pids = serving.pids()
    client = serving.client()
    users = list(range(1, 10_001))  # 10 jobs of 1,000 users, most of them cold-start: slow enough to be cut into
    jobs = client.recommend(users, n=10)
    refresh = client.refresh()
    log = LogWatch(serving.log)
    wait_for(lambda: jobs[0].get_status(refresh=True) == JobStatus.FINISHED, "the first job to finish before the limit")

    refuse_writes(serving.redis)
    wait_for(lambda: log.pids("Redis refuses writes") >= pids, "both workers to log that Redis refuses writes")

    with pytest.raises(RedisRefusingWrites, match=re.escape(f"Redis at {serving.server.url()} refuses writes ({OOM}")):
        client.recommend([3])
    cli = serving.cli("recommend", "3")
    assert (cli.returncode, cli.stdout) == (4, "")
    assert cli.stderr.startswith("bookrec: error: Redis at") and "refuses writes" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1
    status = client.status()
    assert status["redis_writes"] == "refused"
    assert any("refuses writes" in warning for warning in status["warnings"])
    text = serving.cli("status")
    assert text.returncode == 0 and "(writes refused)" in text.stdout and "warning: Redis at" in text.stdout

    # The workers back off rather than spin: a handful of log lines each, not one per attempt.
    wait_for(
        lambda: all(len([ln for ln in log.lines("refuses writes") if f"[{pid}]" in ln]) >= 4 for pid in pids),
        "the workers to retry a few times",
    )
    serving.redis.config_set("maxmemory", 0)  # lift the limit

    client.wait(jobs + [refresh], timeout=60)
    summary = client.wait([refresh])[0]
    wait_for(
        lambda: client.refresh_counts(summary["refresh_id"], summary["users"])[0] == summary["users"],
        "every refresh chunk to be done",
        60,
    )
    cached = serving.redis.mget([KEYS.recs(str(u)) for u in users])
    assert [u for u, entry in zip(users, cached) if entry is None] == []
    assert started_jobs(serving.redis) == []
    assert serving.pids() == pids and serving.pool.process.poll() is None
    assert log.lines("exited with code") == []
    # A job whose cache write was refused mid-way failed with the reason and was retried once Redis took writes.
    assert len(log.lines("enqueued for retry")) == len(log.lines("exception raised while executing"))
    assert client.status()["redis_writes"] == "accepted"


def worker_row(client: Client, pid: int) -> dict | None:
    """The `status` row of the worker with `pid` (None if status does not list it)."""
    return next((w for w in client.status()["workers"] if w["pid"] == pid), None)


def test_a_frozen_worker_is_unresponsive_and_a_killed_one_is_dropped(serving: Service) -> None:
    client = serving.client()
    pid = min(serving.pids())
    name = worker_row(client, pid)["name"]
    assert worker_row(client, pid)["state"] in ("idle", "busy")

    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        row = wait_for(
            lambda: (r := worker_row(client, pid)) and r["state"] == "unresponsive" and r,
            "status to call the frozen worker unresponsive",
            UNRESPONSIVE_AFTER_S + 10 * HEARTBEAT_SECONDS,
        )
        assert time.monotonic() - frozen_at <= UNRESPONSIVE_AFTER_S + 5 * HEARTBEAT_SECONDS
        assert row["heartbeat_age_s"] >= UNRESPONSIVE_AFTER_S
        others = [w for w in client.status()["workers"] if w["pid"] != pid]
        assert [w["state"] for w in others] in (["idle"], ["busy"])
        assert "unresponsive" in serving.cli("status").stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: worker_row(client, pid)["state"] == "idle", "the thawed worker to be idle again")

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_row(client, pid) is None, "status to drop the killed worker", 10)
    assert name not in [w["name"] for w in client.status()["workers"]]


def test_a_refresh_whose_chunks_are_flushed_ends_with_the_number_of_users_not_refreshed(serving: Service) -> None:
    pids = serving.pids()
    earlier = set(serving.redis.keys(KEYS.refresh_users("*")))  # the first test's refresh
    refresh = subprocess.Popen(
        [sys.executable, "-m", "bookrec.cli", "refresh", "--wait"],
        env=serving.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # `refresh --wait` polls the counters (MGET) as soon as the fan-out job's result is written; the chunks
    # (300 one-user jobs) are then being served. Freeze both workers at once to hold the refresh mid-way.
    wait_for(
        lambda: any(c.get("cmd") == "mget" for c in serving.redis.client_list()), "refresh --wait to poll", every=0
    )
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        [users_key] = set(serving.redis.keys(KEYS.refresh_users("*"))) - earlier
        users, done = (int(v or 0) for v in serving.redis.mget([users_key, users_key.replace(b":users", b":done")]))
        assert done < users
        serving.redis.flushdb()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    out, err = refresh.communicate(timeout=60)

    assert refresh.returncode == RefreshIncomplete.exit_code and out == ""
    [line] = err.strip().splitlines()
    assert re.fullmatch(
        r"bookrec: error: refresh \w+ was lost with (\d+) of (\d+) users not refreshed: .*run `bookrec refresh` again",
        line,
    ), line
    not_refreshed, total = map(int, re.search(r"with (\d+) of (\d+)", line).groups())
    assert total == users and users - done <= not_refreshed <= users

    # After the flush the workers restore the pointer and register again, with their real state (not `?`).
    client = serving.client()
    wait_for(lambda: serving.redis.get(KEYS.model_current), "a worker to restore the production pointer")
    wait_for(
        lambda: sorted(w["state"] for w in client.status()["workers"]) == ["idle", "idle"],
        "both workers to be listed again as idle",
    )
    assert {w["pid"] for w in client.status()["workers"]} == pids
    again = serving.cli("refresh", "--wait")
    assert again.returncode == 0, again.stderr
    readers = ModelStore(serving.store.store).metadata(serving.store.version)["id_maps"]["users"]
    assert None not in serving.redis.mget([KEYS.recs(str(u)) for u in readers])


def test_a_read_only_replica_is_one_clear_error_naming_the_fix(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        replica = redis.Redis.from_url(server.url())
        replica.replicaof("127.0.0.1", server.port + 1 if server.port < 65535 else 1)  # a primary that never answers
        client = Client(settings=Settings.from_env({"BOOKREC_REDIS_URL": server.url()}))

        with pytest.raises(RedisRefusingWrites, match="refuses writes .*point BOOKREC_REDIS_URL at the primary"):
            client.recommend([1])
        assert client.status()["redis_writes"] == "refused"
    finally:
        server.stop()
