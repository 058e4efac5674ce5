"""Retrains an operator can follow: real Redis, a real trainer process, the CLI as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import redis

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.errors import JobFailed
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from tests.conftest import REPO, TEST_REDIS_URL, TrainedStore, changed_copy

pytestmark = pytest.mark.integration

TIMEOUT = 120
KEYS = Keys()
NO_TRAINER = "no worker listens on 'retrain': start one with bookrec worker --queues retrain"


def client_for(store: TrainedStore) -> Client:
    """A producer Client configured like the workers of `store`."""
    return Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(store.env()))


def bookrec(store: TrainedStore, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """Run `bookrec ARGV` in a fresh interpreter, as an operator would (on any host that reaches Redis), with `env`
    added to `store`'s environment."""
    return subprocess.run(
        [sys.executable, "-m", "bookrec.cli", *argv],
        env=store.env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def wait_for(probe: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `probe` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_running_retrain_cancelled_stops_within_an_epoch_and_frees_the_lock(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers
) -> None:
    store = ModelStore(fresh_store.store)
    promote(store, redis_client, KEYS, fresh_store.version)
    trainer = start_workers(fresh_store.env(), queues="retrain", processes=1)
    client = client_for(fresh_store)
    # Forced (production's own data trains only when forced); 200 epochs, the most a request may ask, is far more
    # than the test waits for.
    job = client.retrain(params={"epochs": 200, "batch_size": 8}, ratings="ratings.csv", force=True)

    wait_for(lambda: (client.retrain_status(job.id)["epoch"] or 0) >= 2, "the retrain to train two epochs")
    assert client.status()["retrain"] == {"job": job.id, "state": "running"}
    follower = subprocess.Popen(  # an operator re-attaching to the running retrain
        [sys.executable, "-m", "bookrec.cli", "retrain", "status", "--follow", "--json"],
        env=fresh_store.env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (client.retrain_status(job.id)["epoch"] or 0) >= 4, "two more epochs")
    seen = client.retrain_status(job.id)["epoch"]
    asked = client.cancel_retrain()

    assert asked == {"job": job.id, "was": "running", "state": "cancelling"}
    with pytest.raises(JobFailed, match=f"RetrainCancelled: retrain {job.id} cancelled on request after epoch"):
        client.wait([job], timeout=TIMEOUT)
    status = client.retrain_status(job.id)
    assert status["state"] == "cancelled" and status["stage"] == "cancelled"
    assert seen <= status["epoch"] <= seen + 2, f"cancelled at epoch {seen}, stopped after epoch {status['epoch']}"
    assert redis_client.get(KEYS.retrain_lock) is None
    assert [v["version"] for v in store.list()] == [fresh_store.version]
    assert store.production() == fresh_store.version
    assert client.status()["retrain"] is None
    assert trainer.exit_code() is None  # the trainer goes on, ready for the next retrain
    out, err = follower.communicate(timeout=TIMEOUT)
    assert follower.returncode == 0, err
    assert json.loads(out)["state"] == "cancelled"


def test_a_queued_retrain_is_shown_queued_and_cancelled_through_redis_alone(
    fresh_store: TrainedStore, redis_client: redis.Redis
) -> None:
    job = client_for(fresh_store).retrain()  # no trainer runs

    status = json.loads(bookrec(fresh_store, "status", "--json").stdout)
    text = bookrec(fresh_store, "status").stdout
    cancel = bookrec(fresh_store, "retrain", "cancel")
    after = bookrec(fresh_store, "retrain", "status", job.id, "--json")

    assert status["retrain"] == {"job": job.id, "state": "queued"}
    assert status["queues"]["retrain"] == {"rq_name": "retrain", "queued": 1, "failed": 0, "workers": 0}
    assert status["warnings"] == [f"{NO_TRAINER} (1 job(s) waiting)"]
    assert f"retrain: queued (job {job.id})" in text and f"warning: {NO_TRAINER}" in text
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.startswith(f"retrain {job.id} cancelled (it was queued)")
    assert json.loads(after.stdout)["state"] == "cancelled"
    assert redis_client.get(KEYS.retrain_lock) is None
    assert redis_client.llen("rq:queue:retrain") == 0


def test_every_wait_warns_at_once_when_no_worker_listens(fresh_store: TrainedStore, redis_client: redis.Redis) -> None:
    started = time.monotonic()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "bookrec.cli", "retrain", "--wait"],
        env=fresh_store.env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        first_line = waiting.stderr.readline()
        seconds = time.monotonic() - started
    finally:
        waiting.terminate()
        waiting.wait(timeout=30)
    recommend = bookrec(fresh_store, "recommend", "1", "--wait", "--timeout", "2")

    assert first_line == f"bookrec: warning: {NO_TRAINER}\n"
    assert seconds < 20, f"the warning came after {seconds:.1f} s"  # an interpreter start, not a wait
    assert recommend.returncode == 7
    assert recommend.stderr.splitlines()[0] == (
        "bookrec: warning: no worker listens on 'recommend': start one with bookrec worker --queues recommend"
    )
    assert recommend.stderr.splitlines()[1].endswith("did not finish in time (status: queued)")


def test_a_finished_retrain_s_status_shows_the_gate_s_decision_with_both_metrics(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers, tmp_path: Path
) -> None:
    # The trainer's data dir holds a changed copy of production's ratings (5% of the rows gone), so the retrain
    # trains and the gate judges it against production.
    fresh_store = changed_copy(fresh_store, tmp_path)
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    start_workers(fresh_store.env(), queues="retrain", processes=1)
    wait_for(lambda: client_for(fresh_store).listeners("retrain"), "the trainer to listen on 'retrain'")

    waited = bookrec(fresh_store, "retrain", "--ratings", "ratings.csv", "--wait", "--json")  # a named file
    shown = bookrec(fresh_store, "retrain", "status", "--json")
    text = bookrec(fresh_store, "retrain", "status")

    assert waited.returncode == 0 and "warning" not in waited.stderr, waited.stderr
    result, status = json.loads(waited.stdout), json.loads(shown.stdout)
    decision = result["decision"]
    assert status["state"] == "finished" and status["version"] == result["version"]
    assert status["decision"] == decision and status["promoted"] is result["promoted"]
    assert status["production_version"] == fresh_store.version
    assert isinstance(decision["candidate"], float) and isinstance(decision["production"], float)
    assert (
        f"ndcg@10: candidate {result['version']} {decision['candidate']:.4f}, "
        f"production {fresh_store.version} {decision['production']:.4f}"
    ) in text.stdout
    assert decision["reason"] in text.stdout
