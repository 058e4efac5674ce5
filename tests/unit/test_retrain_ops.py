"""Retrains an operator can follow, on fakeredis: queued/running state, listeners, status, cancel, the stop check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fakeredis
import pytest
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

import bookrec.producer.client
from bookrec import cli
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.errors import JobFailed, ValidationError
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_RETRAIN, Keys
from bookrec.shared.locks import RetrainLock
from bookrec.shared.settings import Settings
from bookrec.worker.learn import training
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from bookrec.worker.serve import context
from bookrec.worker.serve.rq_worker import BookrecWorker

KEYS = Keys()
NO_TRAINER = "no worker listens on 'retrain': start one with bookrec worker --queues retrain"


@pytest.fixture
def client(redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> Client:
    """A Client (and every Client the CLI builds) on fakeredis."""
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: redis)
    return Client(settings=Settings())


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bookrec ARGV` run in this process."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_retrain_without_a_trainer_says_queued_and_status_flags_its_queue(client: Client) -> None:
    job = client.retrain()

    status = client.status()

    assert status["retrain"] == {"job": job.id, "state": "queued"}
    assert status["retrain_running"] == job.id
    assert status["queues"]["retrain"]["workers"] == 0
    assert status["warnings"] == [f"{NO_TRAINER} (1 job(s) waiting)"]
    assert client.listeners(QUEUE_RETRAIN) == []
    assert client.retrain_status()["state"] == "queued"


def test_a_listening_worker_counts_and_silences_the_warning(client: Client, redis: fakeredis.FakeRedis) -> None:
    client.retrain()
    worker = BookrecWorker([QUEUE_RETRAIN], connection=redis, name="trainer-1")
    worker.register_birth()

    status = client.status()

    assert client.listeners(QUEUE_RETRAIN) == ["trainer-1"] and client.listeners(QUEUE_RECOMMEND) == []
    assert status["queues"]["retrain"]["workers"] == 1 and status["warnings"] == []


def test_cancelling_a_queued_retrain_takes_it_off_the_queue_and_frees_the_lock(
    client: Client, redis: fakeredis.FakeRedis
) -> None:
    job = client.retrain()

    outcome = client.cancel_retrain()

    assert outcome == {"job": job.id, "was": "queued", "state": "cancelled"}
    assert job.get_status(refresh=True) == JobStatus.CANCELED
    assert Queue(QUEUE_RETRAIN, connection=redis, serializer=JSONSerializer).job_ids == []
    assert redis.get(KEYS.retrain_lock) is None
    assert client.retrain_status()["state"] == "cancelled"  # the latest retrain, though it holds no lock now
    with pytest.raises(ValidationError, match=f"retrain {job.id} is cancelled; there is nothing to cancel"):
        client.cancel_retrain(job.id)
    assert client.retrain().id != job.id


def test_retrain_status_and_cancel_name_what_they_cannot_find(client: Client) -> None:
    with pytest.raises(ValidationError, match="no retrain found"):
        client.retrain_status()
    with pytest.raises(ValidationError, match="no retrain found"):
        client.cancel_retrain()
    with pytest.raises(ValidationError, match="no job 'nope' in Redis"):
        client.retrain_status("nope")
    recommend = client.recommend([1])[0]
    with pytest.raises(ValidationError, match="is not a retrain"):
        client.cancel_retrain(recommend.id)


def test_a_fit_stops_when_its_stop_check_raises(trained, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    epochs = []

    def check() -> None:
        if len(epochs) == 3:
            raise Stop

    store = ModelStore(tmp_path / "models")
    request = TrainRequest(ratings=trained.data_dir / "ratings.csv", kind="mult-dae", params={"epochs": 50})
    with training.stop_check(check), pytest.raises(Stop):
        train_version(store, request, on_epoch=lambda done, planned, logs: epochs.append(done))

    assert epochs == [1, 2, 3]  # every epoch's end is checked: the check after the third one stopped it
    assert store.list() == []  # nothing saved


def test_a_retrain_cancelled_while_a_trainer_takes_it_stops_before_training(
    client: Client, redis: fakeredis.FakeRedis, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(trained.store, tmp_path / "models")
    store = ModelStore(tmp_path / "models")
    monkeypatch.setattr(context, "_context", None)
    context.install(
        context.WorkerContext(Settings(model_store=store.root, data_dir=trained.data_dir), redis, KEYS, store, None)
    )
    job = client.retrain(params={"steps": 5})
    RetrainLock(redis, KEYS, 600).request_cancel(job.id)  # as cancel_retrain does first, before RQ's own cancel

    BookrecWorker([QUEUE_RETRAIN], connection=redis).work(burst=True, with_scheduler=False)

    status = client.retrain_status(job.id)
    assert status["state"] == "cancelled" and status["stage"] == "cancelled"
    assert status["error"].endswith(f"RetrainCancelled: retrain {job.id} cancelled on request; production unchanged")
    assert redis.get(KEYS.retrain_lock) is None
    assert [v["version"] for v in store.list()] == [trained.version]
    with pytest.raises(JobFailed, match="RetrainCancelled"):
        client.wait([job], timeout=5)


def test_the_cli_shows_and_cancels_a_queued_retrain(client: Client, capsys: pytest.CaptureFixture) -> None:
    job = client.retrain()

    code, out, err = run_cli(["status"], capsys)
    assert code == 0 and f"retrain: queued (job {job.id})" in out
    assert f"warning: {NO_TRAINER} (1 job(s) waiting)" in out

    code, out, err = run_cli(["retrain", "status"], capsys)
    assert code == 0 and out.splitlines()[0] == f"retrain {job.id}: queued"
    assert err == f"bookrec: warning: {NO_TRAINER}\n"

    code, out, err = run_cli(["retrain", "cancel"], capsys)
    assert code == 0 and out.startswith(f"retrain {job.id} cancelled (it was queued)")

    code, out, err = run_cli(["retrain", "cancel", job.id], capsys)
    assert code == 2 and err == f"bookrec: error: retrain {job.id} is cancelled; there is nothing to cancel\n"


def test_every_wait_warns_at_once_when_no_worker_listens(client: Client, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["recommend", "1", "--wait", "--timeout", "1"], capsys)

    lines = err.splitlines()
    assert code == 7 and len(lines) == 2
    assert lines[0] == (
        "bookrec: warning: no worker listens on 'recommend': start one with bookrec worker --queues recommend"
    )
    assert lines[1].endswith("did not finish in time (status: queued)")

    code, out, err = run_cli(["retrain", "--wait", "--timeout", "1"], capsys)

    assert code == 7 and err.splitlines() == [
        f"bookrec: warning: {NO_TRAINER}",
        f"bookrec: error: retrain job {client.retrain_status()['job']} still queued after 1.0 s; it goes on in the "
        "background",
    ]


def test_the_cli_retrain_trains_on_the_store_unless_it_names_a_file(
    client: Client, redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture
) -> None:
    queue = Queue(QUEUE_RETRAIN, connection=redis, serializer=JSONSerializer)

    code, out, err = run_cli(["retrain", "--json"], capsys)
    assert code == 0, err
    assert queue.fetch_job(json.loads(out)["job"]).kwargs["ratings"] is None
    client.cancel_retrain()

    code, out, err = run_cli(["retrain", "--ratings", "ratings.csv", "--json"], capsys)
    assert code == 0, err
    assert queue.fetch_job(json.loads(out)["job"]).kwargs["ratings"] == "ratings.csv"
    client.cancel_retrain()

    code, out, err = run_cli(["retrain", "--ratings", "../ratings.csv"], capsys)
    assert code == 2 and "ratings path '../ratings.csv' points outside BOOKREC_DATA_DIR" in err
