"""A dead worker's job goes back to its queue, whichever moment the worker died at.

RQ claims a job in two steps: an execution in the started registry (the worker now names the
job as its current one), then the job's status STARTED. The worker here is a real
`BookrecWorker` on fakeredis, stopped between or after those steps as a SIGKILL would stop it.
"""

from __future__ import annotations

import fakeredis
from rq import Queue, Retry
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.shared.keys import QUEUE_RECOMMEND
from bookrec.worker.serve.rq_worker import BookrecWorker
from bookrec.worker.serve.supervisor import recover_abandoned

JOB = "worker.jobs.recommend"


def claimed_by_a_dead_worker(redis: fakeredis.FakeRedis, started: bool):
    """Enqueue two jobs; a worker claims the first (and, if `started`, marks it STARTED) and dies there."""
    queue = Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)
    first = queue.enqueue(JOB, ["1"], retry=Retry(max=2))
    queue.enqueue(JOB, ["2"])
    worker = BookrecWorker([queue], connection=redis, name="dead-worker")
    worker.register_birth()
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=None)
    worker.prepare_execution(job)
    if started:
        worker.prepare_job_execution(job)
    assert job.id == first.id and worker.get_current_job_id() == first.id
    return queue, first


def test_a_job_claimed_but_not_started_goes_back_to_the_front_of_its_queue_with_no_try_spent(redis) -> None:
    queue, job = claimed_by_a_dead_worker(redis, started=False)
    assert job.get_status(refresh=True) == JobStatus.QUEUED and job.id not in queue.job_ids

    assert recover_abandoned(redis, "dead-worker") == job.id
    assert queue.job_ids[0] == job.id
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    job.refresh()
    assert job.retries_left == 2
    assert StartedJobRegistry(QUEUE_RECOMMEND, connection=redis).get_job_ids() == []


def test_a_started_job_is_retried_through_rq_with_one_try_spent(redis) -> None:
    queue, job = claimed_by_a_dead_worker(redis, started=True)

    assert recover_abandoned(redis, "dead-worker") == job.id
    assert job.id in queue.job_ids
    job.refresh()
    assert job.get_status() == JobStatus.QUEUED and job.retries_left == 1
    assert StartedJobRegistry(QUEUE_RECOMMEND, connection=redis).get_job_ids() == []
