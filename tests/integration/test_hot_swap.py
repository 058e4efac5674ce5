"""Hot swap under load: a new version is trained and promoted while recommend jobs keep arriving.

No job may fail, every job runs on one version and says which, every cached list names the
version of the job that wrote it, and the switch completes within seconds of the promotion.
A list holds the deployment's list length (the largest n asked for), so a list is told apart from
those the promotion's refresh (or a later job) wrote by its version: only ever old -> new.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import worker_state
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, Keys
from bookrec.shared.settings import Settings
from tests.conftest import REPO, TEST_REDIS_URL, TrainedStore, train_tiny

pytestmark = pytest.mark.integration

STREAM_N = 7
WARM_N = 5
SWITCH_SECONDS = 5.0
KEYS = Keys()


@dataclass(frozen=True)
class Sent:
    """One recommend job of the stream, its users, and their cached lists read as soon as it finished."""

    job: Job
    users: list[str]
    entries: list[dict | None]


class Stream(threading.Thread):
    """Keeps a single-user and a five-user recommend job in flight, round after round, until stopped.

    Users known to the model are cycled through; after each round their lists are read, before
    the next round can overwrite them (only a refresh chunk can, with the new version).
    """

    def __init__(self, client: Client, known: list[str]) -> None:
        super().__init__(name="recommend-stream", daemon=True)
        self.client, self.known = client, itertools.cycle(known)
        self.sent: list[Sent] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            for round_ in itertools.count():
                if self.halt.is_set():
                    return
                single = [next(self.known)]
                batch = [next(self.known), *(f"new-{round_}-{i}" for i in range(4))]
                jobs = [(job, users) for users in (single, batch) for job in self.client.recommend(users, n=STREAM_N)]
                self.client.wait([job for job, _ in jobs], timeout=60)
                self.sent.extend(Sent(job, users, [self.entry(u) for u in users]) for job, users in jobs)
        except BaseException as exc:  # handed to the test thread, which asserts there was none
            self.error = exc

    def entry(self, user: str) -> dict | None:
        cached = self.client.get(user)
        return None if cached is None else cached.entry

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        """Block until the stream has sent `count` jobs in total."""
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            assert self.error is None, f"the stream failed: {self.error!r}"
            assert time.monotonic() < deadline, f"the stream sent only {len(self.sent)} of {count} jobs in {timeout} s"
            time.sleep(0.05)


def worker_versions(client: redis.Redis) -> list[str]:
    return [state["version"] for state in worker_state.read_all(client, KEYS)]


def wait_for_swap(client: redis.Redis, old: str, new: str, warm: list[str], timeout: float = 30.0) -> None:
    """Wait until both workers report `new`, checking all along that the warm users' lists stay readable."""
    deadline = time.monotonic() + timeout
    while worker_versions(client) != [new, new]:
        for user in warm:
            raw = client.get(KEYS.recs(user))
            assert raw is not None, f"user {user}'s list vanished during the swap"
            cached = json.loads(raw)
            assert cached["model_version"] in {old, new}
        assert time.monotonic() < deadline, (
            f"workers report {worker_versions(client)} {timeout} s after promoting {new}"
        )
        time.sleep(0.05)


def check_jobs(sent: list[Sent], old: str, new: str) -> tuple[dict[str, str], dict[str, datetime], set[str]]:
    """Assert every job succeeded at its first try and its lists name its version.

    Returns each job's version and finish time, and the versions seen on model-scored (not fallback) lists.
    """
    versions, finished, model_versions = {}, {}, set()
    for job, users, entries in ((s.job, s.users, s.entries) for s in sent):
        results = job.results()
        assert [r.type for r in results] == [Result.Type.SUCCESSFUL], f"job {job.id} had a failed try"
        versions[job.id], finished[job.id] = results[0].return_value["model_version"], results[0].created_at
        for user, cached in zip(users, entries):
            assert cached is not None, f"job {job.id} finished without caching user {user}"
            if cached["model_version"] == versions[job.id]:
                if cached["fallback"] is None:
                    model_versions.add(cached["model_version"])
            else:  # a refresh chunk or a later job replaced it between the job and the read: never with the old version
                assert (versions[job.id], cached["model_version"]) == (old, new), f"user {user}'s list went back"
    return versions, finished, model_versions


def test_promotion_under_a_stream_of_recommend_jobs(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    old = fresh_store.version
    promote(ModelStore(fresh_store.store), redis_client, KEYS, old)
    start_workers(fresh_store.env()).wait_ready(redis_client, 2, old)
    settings = Settings.from_env(fresh_store.env())
    client = Client(redis_url=TEST_REDIS_URL, settings=settings)
    known = json.loads((fresh_store.store / old / "metadata.json").read_text())["id_maps"]["users"]
    warm, pool = known[:20], known[20:]
    client.recommend(warm, n=WARM_N, wait=True, timeout=60)

    stream = Stream(Client(redis_url=TEST_REDIS_URL, settings=settings), pool)
    stream.start()
    stream.wait_for(10)
    new = train_tiny(fresh_store.store, fresh_store.data_dir, seed=1)
    event = client.promote(new)
    promoted_at = datetime.now(timezone.utc)
    wait_for_swap(redis_client, old, new, warm)
    swapped_after = (datetime.now(timezone.utc) - promoted_at).total_seconds()
    stream.wait_for(len(stream.sent) + 20)  # jobs enqueued after every worker swapped
    stream.halt.set()
    stream.join(timeout=60)

    assert stream.error is None, f"the stream failed: {stream.error!r}"
    for queue in (QUEUE_RECOMMEND, QUEUE_REFRESH):
        assert FailedJobRegistry(queue, connection=redis_client, serializer=JSONSerializer).count == 0
    versions, finished, model_versions = check_jobs(stream.sent, old, new)
    assert set(versions.values()) == {old, new}, "the stream did not run across the promotion"
    assert model_versions == {old, new}, "model-scored lists were not cached on both sides of the swap"
    last_old = max(finished[job_id] for job_id, version in versions.items() if version == old)
    assert (last_old - promoted_at).total_seconds() < SWITCH_SECONDS, (
        f"old-version results until {last_old - promoted_at} after promotion"
    )
    assert swapped_after < SWITCH_SECONDS, f"workers swapped {swapped_after:.1f} s after promotion"
    refresh = Job.fetch(event["refresh_job"], connection=redis_client, serializer=JSONSerializer)
    assert refresh.get_status() in {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.FINISHED}


def worker_states(client: redis.Redis) -> list[tuple[str, str]]:
    """(version served, version pending) of each live worker."""
    return sorted((state["version"], state.get("pending_version", "")) for state in worker_state.read_all(client, KEYS))


def bookrec_status(env: dict[str, str]) -> dict[str, str]:
    """What `bookrec status` and `bookrec status --json` print."""
    outputs = {}
    for form, flags in (("text", []), ("json", ["--json"])):
        done = subprocess.run(
            [sys.executable, "-m", "bookrec.cli", "status", *flags],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs[form] = done.stdout
    return outputs


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.05)


def test_workers_load_a_promoted_version_only_while_holding_a_swap_slot(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    """Loads are staggered through the swap slots (BOOKREC_SWAP_SLOTS=1 here): with the only slot taken, both
    workers see the promotion but keep serving the old version; once it is free, they swap one after the other."""
    old = fresh_store.version
    store = ModelStore(fresh_store.store)
    promote(store, redis_client, KEYS, old)
    start_workers(fresh_store.env()).wait_ready(redis_client, 2, old)
    client = Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(fresh_store.env()))
    known = json.loads((fresh_store.store / old / "metadata.json").read_text())["id_maps"]["users"]
    new = train_tiny(fresh_store.store, fresh_store.data_dir, seed=1)

    redis_client.set(KEYS.swap_slot(0), "test-holds-the-slot", ex=120)
    promote(store, redis_client, KEYS, new)
    wait_until(lambda: worker_states(redis_client) == [(old, new), (old, new)], "both workers saw the promotion")
    jobs = [job for user in known[:40] for job in client.recommend([user], n=STREAM_N)]
    client.wait(jobs, timeout=60)
    for job in jobs:
        job.refresh()
    assert {job.latest_result().return_value["model_version"] for job in jobs} == {old}
    assert len({job.worker_name for job in jobs}) == 2, "the jobs did not reach both workers"
    assert worker_states(redis_client) == [(old, new), (old, new)], "a worker loaded without a swap slot"
    shown = bookrec_status(fresh_store.env())
    assert [(w["model_version"], w["pending_version"]) for w in json.loads(shown["json"])["workers"]] == [
        (old, new)
    ] * 2
    assert shown["text"].count(f"{old} -> {new}") == 2, shown["text"]

    redis_client.delete(KEYS.swap_slot(0))
    wait_until(
        lambda: worker_states(redis_client) == [(new, ""), (new, "")], "both workers swapped once the slot was free"
    )
    assert redis_client.get(KEYS.swap_slot(0)) is None, "a worker kept the swap slot after its load"
