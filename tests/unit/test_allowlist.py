"""BookrecWorker runs only bookrec's job functions, each on its own queues: whoever can write to Redis cannot run
other code in a worker, nor a retrain in a serving worker.

Each test runs a real `BookrecWorker` in burst mode on fakeredis. The refused jobs name
functions that would create a file, so "refused" is checked by the file not existing.
"""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import import_attribute
from rq.worker import SimpleWorker

from bookrec.model_store.store import ModelStore
from bookrec.shared import jobs
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, Keys
from bookrec.worker.jobs import FUNCTIONS
from bookrec.worker.serve import context
from bookrec.worker.serve.rq_worker import BookrecWorker
from bookrec.worker.serve.runtime import ModelRuntime
from tests.unit.conftest import install_context

HELPER = f"{__name__}.create_file"
CALLBACK = f"{__name__}.create_marker"


def create_file(path: str) -> str:
    """What an attacker's job would do: leave a trace on the worker's disk."""
    Path(path).write_text("ran")
    return path


def create_marker(job: Job, connection, *args) -> None:
    """A callback that leaves a trace at the path in the job's meta."""
    Path(job.meta["marker"]).write_text("callback ran")


@pytest.fixture
def queue(redis: fakeredis.FakeRedis) -> Queue:
    return Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)


@pytest.fixture(autouse=True)
def worker_context(trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker context on fakeredis serving the trained version, so allowed jobs can succeed."""
    install_context(trained, runtime, redis, monkeypatch, [QUEUE_RECOMMEND])


def run_burst(redis: fakeredis.FakeRedis) -> None:
    BookrecWorker([QUEUE_RECOMMEND], connection=redis).work(burst=True, with_scheduler=False)


def outcome(job: Job) -> tuple[JobStatus, str]:
    """(status, last line of the failure) of a job after the worker ran."""
    result = job.latest_result()
    reason = result.exc_string.strip().splitlines()[-1] if result and result.exc_string else ""
    return job.get_status(refresh=True), reason


def test_the_test_helper_would_really_run_if_allowed(tmp_path: Path) -> None:
    """Control for the tests below: the helper is importable by dotted path and creates its file."""
    target = tmp_path / "control"
    import_attribute(HELPER)(str(target))
    assert target.exists()


@pytest.mark.parametrize(
    ("func", "argument"),
    [("os.system", "touch {path}"), ("builtins.eval", "open({path!r}, 'w').write('x')"), (HELPER, "{path}")],
    ids=["os.system", "builtins.eval", "test-helper"],
)
def test_a_function_outside_the_allowlist_is_refused(
    redis, queue: Queue, tmp_path: Path, func: str, argument: str
) -> None:
    target = tmp_path / "pwned"
    job = queue.enqueue(func, argument.format(path=str(target)))

    run_burst(redis)

    status, reason = outcome(job)
    assert status == JobStatus.FAILED
    assert f"refused to run {func!r}" in reason
    assert not target.exists()


def test_an_allowed_job_after_a_refused_one_still_succeeds(redis, queue: Queue, tmp_path: Path) -> None:
    refused = queue.enqueue(HELPER, str(tmp_path / "pwned"))
    allowed = queue.enqueue("worker.jobs.recommend", [1, 2], n=3)

    run_burst(redis)

    assert outcome(refused)[0] == JobStatus.FAILED
    assert outcome(allowed) == (JobStatus.FINISHED, "")
    assert allowed.latest_result().return_value["users"] == 2


# n=0 makes the allowed job fail, so its failure callback is due.
@pytest.mark.parametrize(
    ("kind", "n", "status"), [("on_success", 3, JobStatus.FINISHED), ("on_failure", 0, JobStatus.FAILED)]
)
def test_callbacks_never_run(redis, queue: Queue, tmp_path: Path, kind: str, n: int, status: JobStatus) -> None:
    marker = tmp_path / "callback"
    # A plain RQ worker imports the function by its module path; bookrec's runs it by its public name.
    enqueue = lambda name: queue.enqueue(name, [1], n=n, meta={"marker": str(marker)}, **{kind: Callback(CALLBACK)})  # noqa: E731
    enqueue("bookrec.worker.jobs.recommend")
    SimpleWorker([queue], connection=redis, serializer=JSONSerializer).work(burst=True, with_scheduler=False)
    assert marker.exists(), "control: a plain RQ worker runs the callback"
    marker.unlink()
    job = enqueue("worker.jobs.recommend")

    run_burst(redis)

    assert job.get_status(refresh=True) == status
    assert not marker.exists()


def test_a_pickled_job_is_not_run(redis, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    job = Queue(QUEUE_RECOMMEND, connection=redis).enqueue(create_file, str(target))  # RQ's default serializer: pickle

    run_burst(redis)

    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert not target.exists()


MISQUEUED = [
    ("worker.jobs.retrain", QUEUE_RECOMMEND, "'retrain'"),
    ("worker.jobs.retrain", QUEUE_REFRESH, "'retrain'"),
    ("worker.jobs.recommend", QUEUE_RETRAIN, "'recommend' or 'refresh'"),
    ("worker.jobs.refresh", QUEUE_RETRAIN, "'recommend' or 'refresh'"),
]


@pytest.mark.parametrize(
    ("func", "queue_name", "allowed"), MISQUEUED, ids=[f"{f[12:]} on {q}" for f, q, _ in MISQUEUED]
)
def test_a_job_function_runs_only_on_its_own_queues(
    redis: fakeredis.FakeRedis, trained, func: str, queue_name: str, allowed: str
) -> None:
    store = ModelStore(trained.store)
    before = store.list()
    misplaced = Queue(queue_name, connection=redis, serializer=JSONSerializer).enqueue(
        func, kwargs={"params": {"steps": 5}} if func.endswith("retrain") else {}, retry=Retry(max=2)
    )

    BookrecWorker([queue_name], connection=redis).work(burst=True, with_scheduler=False)

    assert outcome(misplaced) == (
        JobStatus.FAILED,
        f"bookrec.worker.serve.rq_worker.JobNotAllowed: refused to run {func!r} from queue {queue_name!r}: "
        f"it runs only on {allowed}",
    )
    assert store.list() == before  # nothing was trained
    assert FailedJobRegistry(queue_name, connection=redis).get_job_ids() == [misplaced.id]  # not retried


def test_under_a_prefix_jobs_pair_with_the_deployment_s_queues(redis: fakeredis.FakeRedis) -> None:
    keys = Keys("staging:")
    context.get().keys = keys
    queue = Queue(keys.queue(QUEUE_RECOMMEND), connection=redis, serializer=JSONSerializer)
    served = queue.enqueue("worker.jobs.recommend", kwargs={"user_ids": [1]})
    refused = queue.enqueue("worker.jobs.retrain")

    BookrecWorker([queue.name], connection=redis).work(burst=True, with_scheduler=False)

    assert outcome(served) == (JobStatus.FINISHED, "")
    assert outcome(refused)[1].endswith(
        "refused to run 'worker.jobs.retrain' from queue 'staging:recommend': it runs only on 'staging:retrain'"
    )


def test_every_allowlisted_function_is_paired_with_its_queues() -> None:
    assert set(jobs.RUNS_ON) == set(FUNCTIONS)
    assert jobs.RUNS_ON[jobs.RETRAIN] == (QUEUE_RETRAIN,)
    assert all(QUEUE_RETRAIN not in queues for name, queues in jobs.RUNS_ON.items() if name != jobs.RETRAIN)
