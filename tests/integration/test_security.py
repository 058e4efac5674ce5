"""Security of the running service: Redis with a password, an ACL user and TLS; no secret in logs, status or
job data; JSON only, so a pickled payload written into Redis never runs code in a worker; no webhook
written into a job is ever sent.

Each server is a private `redis-server`; each pool is one real worker process.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.errors import RedisUnavailable
from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.shared.settings import Settings
from tests.conftest import REPO, TrainedStore, WorkerPool
from tests.integration.redis_server import RedisServer, free_port, make_certificates

pytestmark = pytest.mark.integration

KEYS = Keys()
DEFAULT_PASSWORD = "default-Pa55word-x91"
USER, USER_PASSWORD = "bookrec", "acl-Pa55word-q27"
SECRETS = (DEFAULT_PASSWORD, USER_PASSWORD)
ACL = ("--requirepass", DEFAULT_PASSWORD, "--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all")


class CreatesFile:
    """Unpickling this creates a file: what an attacker would put in a pickled job payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@dataclass
class Served:
    """A private Redis, a store whose version is in production there, and a worker pool using `url`."""

    server: RedisServer
    store: TrainedStore
    url: str
    env: dict[str, str]
    pool: WorkerPool
    log: Path
    admin: redis.Redis  # connected as the ACL user, for test set-up and checks

    def client(self, url: str | None = None) -> Client:
        return Client(redis_url=url or self.url, settings=Settings.from_env(self.env))


def serve(
    trained: TrainedStore, root: Path, server: RedisServer, url: str, before_start=lambda admin: None, **env: str
) -> Served:
    """Start `server`, promote the trained version, run `before_start(admin)`, start one worker and wait for it."""
    store = TrainedStore(trained.data_dir, root / "models", trained.version)
    shutil.copytree(trained.store, store.store)
    server.start()
    full_env = store.env(url, **env)
    admin = Client(settings=Settings.from_env(full_env)).redis
    promote(ModelStore(store.store), admin, KEYS, store.version)
    before_start(admin)
    log = root / "workers.log"
    pool = WorkerPool(full_env, processes=1, log=log)
    pool.wait_ready(admin, 1, store.version, timeout=90)
    return Served(server, store, url, full_env, pool, log, admin)


def plant_pickles(admin: redis.Redis, root: Path) -> None:
    """Before the worker starts: an abandoned job whose meta is a pickle that would create `meta-unpickled`."""
    job = Queue(QUEUE_RECOMMEND, connection=admin, serializer=JSONSerializer).create_job(
        "worker.jobs.recommend", kwargs={"user_ids": [1]}
    )
    job.save()
    admin.hset(
        job.key, mapping={"status": JobStatus.STARTED.value, "meta": pickle.dumps(CreatesFile(root / "meta-unpickled"))}
    )
    admin.zadd(StartedJobRegistry(QUEUE_RECOMMEND, connection=admin).key, {f"{job.id}:abandoned": 1})
    admin.set("test:planted", job.id)


@pytest.fixture(scope="module")
def acl(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A plain-TCP server with a default-user password and an ACL user; the worker connects as the ACL user."""
    root = tmp_path_factory.mktemp("acl")
    server = RedisServer(root, extra=ACL)
    served = serve(
        trained,
        root,
        server,
        server.url(credentials=f"{USER}:{USER_PASSWORD}"),
        lambda admin: plant_pickles(admin, root),
    )
    try:
        yield served
    finally:
        served.pool.stop()
        server.stop()


def test_the_acl_user_and_the_default_password_both_work(acl: Served) -> None:
    as_user = acl.client().recommend([1, 2], wait=True, timeout=30)
    as_default = acl.client(acl.server.url(credentials=f":{DEFAULT_PASSWORD}")).recommend([3], wait=True, timeout=30)

    assert [e["user_id"] for e in as_user + as_default] == [1, 2, 3]
    assert [w["model_version"] for w in acl.client().status()["workers"]] == [acl.store.version]


@pytest.mark.parametrize(
    "credentials", [f"{USER}:wrong-password", ":wrong-password", ""], ids=["acl user", "default user", "none"]
)
def test_wrong_or_missing_credentials_are_one_clear_error_without_the_password(acl: Served, credentials: str) -> None:
    with pytest.raises(RedisUnavailable) as error:
        acl.client(acl.server.url(credentials=credentials)).recommend([1])

    assert "refused the credentials" in str(error.value) and "127.0.0.1" in str(error.value)
    assert "wrong-password" not in str(error.value)


def test_no_secret_in_logs_status_or_job_data(acl: Served) -> None:
    client = acl.client()
    client.recommend([4, 5], wait=True, timeout=30)
    status_json = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "status", "--json"], env=acl.env, cwd=REPO, capture_output=True, text=True
    )
    status_text = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "status"], env=acl.env, cwd=REPO, capture_output=True, text=True
    )
    down = {**acl.env, "BOOKREC_REDIS_URL": f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{free_port()}/0"}
    unreachable = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "recommend", "1"], env=down, cwd=REPO, capture_output=True, text=True
    )
    job_data = [
        json.dumps({k.decode(): v.decode(errors="replace") for k, v in acl.admin.hgetall(key).items()})
        for key in acl.admin.scan_iter(match="rq:job:*")
    ]

    assert status_json.returncode == 0 and json.loads(status_json.stdout)["redis"] == acl.server.url(
        credentials=f"{USER}:***"
    )
    assert status_text.returncode == 0 and f"{USER}:***@" in status_text.stdout
    assert unreachable.returncode == 4 and f"{USER}:***@" in unreachable.stderr
    outputs = {
        "worker log": acl.log.read_text(errors="replace"),
        "status --json": status_json.stdout + status_json.stderr,
        "status": status_text.stdout + status_text.stderr,
        "error": unreachable.stderr,
        "jobs": "\n".join(job_data),
        "Client.status()": json.dumps(client.status()),
    }
    assert job_data and {name: [s for s in SECRETS if s in text] for name, text in outputs.items()} == {
        name: [] for name in outputs
    }


def test_a_pickled_job_payload_is_refused_without_being_unpickled(acl: Served, tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CreatesFile(control)))
    assert control.exists()  # the payload below really would create its file if unpickled
    marker = tmp_path / "job-unpickled"
    queue = Queue(QUEUE_RECOMMEND, connection=acl.admin, serializer=JSONSerializer)
    job = queue.create_job("worker.jobs.recommend", kwargs={"user_ids": [6]})
    job.data = pickle.dumps((CreatesFile(marker), None, [], {}))  # what a pickle-based producer would write
    queue.enqueue_job(job)
    after = acl.client().recommend([7], wait=True, timeout=30)

    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert "DeserializationError" in job.latest_result().exc_string
    assert not marker.exists()
    assert after[0]["user_id"] == 7  # the worker went on


class Recorder(BaseHTTPRequestHandler):
    """Records the path of every request it gets."""

    paths: list[str] = []

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        self.paths.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhooks_written_into_a_job_are_never_sent(acl: Served) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    queue = Queue(QUEUE_RECOMMEND, connection=acl.admin, serializer=JSONSerializer)
    jobs = [
        queue.create_job(func, kwargs=kwargs)
        for func, kwargs in (("worker.jobs.recommend", {"user_ids": [8]}), ("os.getcwd", {}))
    ]
    try:
        for job in jobs:
            hooks = [
                {
                    "url": f"http://127.0.0.1:{server.server_port}/{job.id}/{status}",
                    "job_status": status,
                    "method": "POST",
                    "headers": None,
                    "timeout": 2,
                }
                for status in ("finished", "failed")
            ]
            job.save()
            acl.admin.hset(job.key, "webhooks", json.dumps(hooks))
            queue.enqueue_job(job)
        acl.client().recommend([9], wait=True, timeout=30)  # one worker: both jobs above have ended, hooks and all

        assert [job.get_status(refresh=True) for job in jobs] == [JobStatus.FINISHED, JobStatus.FAILED]
        assert Recorder.paths == []
    finally:
        server.shutdown()


def test_registry_maintenance_never_unpickles_a_job_s_meta(acl: Served) -> None:
    planted = acl.admin.get("test:planted").decode()
    registry = StartedJobRegistry(QUEUE_RECOMMEND, connection=acl.admin, serializer=JSONSerializer)

    deadline = time.monotonic() + 30
    while planted in registry.get_job_ids(cleanup=False) and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker cleans its queues' registries when it starts

    assert planted not in registry.get_job_ids(cleanup=False)
    assert not (acl.log.parent / "meta-unpickled").exists()
    assert Job.fetch(planted, connection=acl.admin, serializer=JSONSerializer).get_status() != JobStatus.STARTED


@pytest.fixture(scope="module")
def tls(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A TLS-only server (certificates from a throw-away CA) with an ACL user; the worker connects with rediss://."""
    if shutil.which("openssl") is None:
        pytest.skip("TLS test needs the openssl command to make certificates")
    root = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(root / "certificates")
    server = RedisServer(root, extra=ACL, tls=certificates)
    try:
        served = serve(
            trained,
            root,
            server,
            server.url("rediss", f"{USER}:{USER_PASSWORD}"),
            BOOKREC_REDIS_CA_CERT=str(certificates / "ca.crt"),
        )
    except RuntimeError as exc:
        server.stop()
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        raise
    try:
        yield served
    finally:
        served.pool.stop()
        server.stop()


def test_tls_with_the_ca_certificate_works_and_without_it_is_refused(tls: Served) -> None:
    entries = tls.client().recommend([1, 2], wait=True, timeout=30)
    untrusted = Client(settings=Settings(redis_url=tls.url))  # no BOOKREC_REDIS_CA_CERT: the server's CA is unknown
    plain = Client(settings=Settings(redis_url=tls.url.replace("rediss://", "redis://")))

    assert [e["model_version"] for e in entries] == [tls.store.version] * 2
    with pytest.raises(RedisUnavailable, match="certificate verify failed"):
        untrusted.get(1)
    with pytest.raises(RedisUnavailable):
        plain.get(1)
