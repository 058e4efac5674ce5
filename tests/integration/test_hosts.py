"""The service across three simulated hosts: network namespaces joined by veth pairs on a bridge (`ip netns`, as
root), each with a hostname of its own (`unshare --uts`). Redis runs on one "host", a serving worker on each of two
others, the model store in a directory both read. A hot swap under a stream of requests, then one worker host cut
off (its veth link downed) while it holds a job: 0 failed requests, and the other host's supervisor hands the cut-off
worker's job back once that worker has been silent for WORKER_SILENT_S, so its requests are served there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import worker_state
from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import ChildProcess
from tests.conftest import TrainedStore, wait_for
from tests.integration.test_faults import clone_version

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("unshare")),
        reason="network namespaces need root, iproute2's `ip` and util-linux's `unshare`",
    ),
]

KEYS = Keys()
SUBNET = "10.77.0"
REDIS_PORT = 6379
BATCH = 200  # readers per request: a job takes long enough to be caught holding one


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Hosts:
    """A bridge in this namespace (10.77.0.1) and one namespace per host on it, named with this process's pid."""

    tag: str = field(default_factory=lambda: f"bk{os.getpid() % 10000}")
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    def __enter__(self) -> Hosts:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add(self, name: str) -> str:
        """A new host on the bridge; its address."""
        address = f"{SUBNET}.{len(self.hosts) + 2}"
        ns, outside, inside = f"{self.tag}-{name}", self.link(name), f"{self.tag}{name}i"
        ip("netns", "add", ns)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", ns)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        ip("-n", ns, "link", "set", inside, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = address
        return address

    def link(self, name: str) -> str:
        """The host's end of its veth pair on the bridge (downing it cuts the host off)."""
        return f"{self.tag}{name}o"

    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` run on host `name`: in its namespace, with its own hostname."""
        return ["ip", "netns", "exec", f"{self.tag}-{name}", "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', name, *argv]  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        for name in self.hosts:
            subprocess.run(["ip", "netns", "del", f"{self.tag}-{name}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    with Hosts() as made:
        yield made


def worker_names_by_host(client: redis.Redis, version: str) -> dict[str, str]:
    """{hostname: RQ worker name} of the live workers serving `version`."""
    found = {}
    for state in worker_state.read_all(client, KEYS):
        if state.get("version") == version:
            host = client.hget(f"rq:worker:{state['name']}", "hostname")
            if host:
                found[host.decode()] = state["name"]
    return found


def test_a_hot_swap_and_a_worker_host_cut_off_fail_no_request(
    hosts: Hosts, fresh_store: TrainedStore, tmp_path: Path
) -> None:
    redis_at = hosts.add("redis")
    for name in ("host-b", "host-c"):
        hosts.add(name)
    server = ChildProcess(
        hosts.command("redis", ["redis-server", "--bind", redis_at, "--port", str(REDIS_PORT), "--save", "",
                                "--appendonly", "no", "--protected-mode", "no", "--dir", str(tmp_path)]),
        dict(os.environ),
        tmp_path / "redis.log",
    )  # fmt: skip
    env = fresh_store.env(f"redis://{redis_at}:{REDIS_PORT}/0")
    settings = Settings.from_env(env)
    admin = redis.Redis(host=redis_at, port=REDIS_PORT, socket_timeout=5)
    workers: dict[str, ChildProcess] = {}
    senders: list[threading.Event] = []
    try:
        wait_for(lambda: _answers(admin), "Redis on its host to answer")
        promote(ModelStore(fresh_store.store), admin, KEYS, fresh_store.version)
        for name in ("host-b", "host-c"):
            argv = [sys.executable, "-m", "bookrec", "worker", "--queues", QUEUE_RECOMMEND, "--processes", "1"]
            workers[name] = ChildProcess(hosts.command(name, argv), env, tmp_path / f"{name}.log")
        wait_for(lambda: len(worker_names_by_host(admin, fresh_store.version)) == 2, "a worker on each host", 120)

        client = Client(settings=settings)
        users = ModelStore(fresh_store.store).metadata(fresh_store.version)["id_maps"]["users"]
        acked: list[str] = []
        stop = threading.Event()

        def send() -> None:
            start = 0
            while not stop.is_set():
                chunk = [users[(start + i) % len(users)] for i in range(BATCH)]
                acked.append(client.recommend(chunk)[0].id)  # a failed send would fail the test: Redis stays up
                start += BATCH
                stop.wait(0.05)  # 20 requests/s: one worker keeps up alone once the other is cut off

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        senders.append(stop)
        wait_for(lambda: len(acked) >= 20, "requests to flow")

        new = clone_version(fresh_store.store, fresh_store.version)
        client.promote(new)
        serving = wait_for(lambda: len(worker_names_by_host(admin, new)) == 2 and worker_names_by_host(admin, new),
                           "both hosts to swap to the new version", 120)  # fmt: skip

        cut_worker = serving["host-c"]
        held_job = wait_for(lambda: _frozen_holding_a_job(admin, cut_worker), "host-c's worker frozen holding a job")
        ip("link", "set", hosts.link("host-c"), "down")
        os.kill(_pid(admin, cut_worker), signal.SIGCONT)  # it runs on, cut off mid-job
        wait_for(lambda: _served_by(admin, held_job), "host-b to serve the job host-c held", 120)
        stop.set()
        sender.join(timeout=30)

        finished = FinishedJobRegistry(KEYS.queue(QUEUE_RECOMMEND), connection=admin, serializer=JSONSerializer)
        wait_for(lambda: set(acked) <= set(finished.get_job_ids()), "every request to be served", 120)
        assert _served_by(admin, held_job) == serving["host-b"]
        failed = FailedJobRegistry(KEYS.queue(QUEUE_RECOMMEND), connection=admin, serializer=JSONSerializer)
        assert failed.count == 0, f"failed requests: {failed.get_job_ids()}"
        print(
            f"\n{len(acked)} requests of {BATCH} readers, a swap to {new}, host-c cut off holding {held_job}: 0 failed"
        )
    finally:
        for stop_sending in senders:
            stop_sending.set()
        ip("link", "set", hosts.link("host-c"), "up")  # so host-c's worker can finish and stop
        for process in workers.values():
            process.stop(timeout=60)
        server.stop(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def _pid(client: redis.Redis, name: str) -> int:
    return int(client.hget(f"rq:worker:{name}", "pid"))


def _frozen_holding_a_job(client: redis.Redis, name: str) -> str | None:
    """Freeze worker `name` (SIGSTOP) once it holds a job; that job's id, or None (and the worker thawed) if it
    finished the job before it froze. Jobs take milliseconds: freezing is what makes the cut land mid-job."""
    if not _current_job(client, name):
        return None
    os.kill(_pid(client, name), signal.SIGSTOP)
    held = _current_job(client, name)
    if held is None:
        os.kill(_pid(client, name), signal.SIGCONT)
    return held


def _current_job(client: redis.Redis, name: str) -> str | None:
    """The job RQ's record of worker `name` says it is running."""
    worker = Worker.find_by_key(
        Worker.redis_worker_namespace_prefix + name, connection=client, serializer=JSONSerializer
    )
    return worker.get_current_job_id() if worker is not None else None


def _served_by(client: redis.Redis, job_id: str) -> str | None:
    """The worker whose successful result `job_id` has, if any."""
    result = Job(job_id, connection=client, serializer=JSONSerializer).latest_result()
    return result.worker_name if result is not None and result.type == result.Type.SUCCESSFUL else None
