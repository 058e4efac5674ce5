"""The worker loop gives `between_jobs` (where a model swap happens) its turns: while idle, and before every dequeue."""

from __future__ import annotations

import fakeredis
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.shared.keys import QUEUE_RECOMMEND
from bookrec.worker.serve.rq_worker import BookrecWorker


def test_an_idle_worker_runs_between_jobs_every_slice_and_still_takes_the_next_job(redis: fakeredis.FakeRedis) -> None:
    queue = Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)
    calls: list[int] = []

    def between_jobs() -> None:
        calls.append(queue.count)
        if len(calls) == 3:  # the worker has waited through two empty slices: now a job arrives
            queue.enqueue("worker.jobs.recommend", ["1"])

    worker = BookrecWorker([queue], connection=redis, between_jobs=between_jobs)
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=405)  # RQ's default dequeue timeout
    assert calls == [0, 0, 0], "between_jobs did not run once per idle slice"
    assert job.func_name == "worker.jobs.recommend" and queue.count == 0


def test_between_jobs_runs_before_a_burst_dequeue_too(redis: fakeredis.FakeRedis) -> None:
    queue = Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)
    queue.enqueue("worker.jobs.recommend", ["1"])
    calls: list[int] = []
    worker = BookrecWorker([queue], connection=redis, between_jobs=lambda: calls.append(queue.count))
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=None)
    assert calls == [1] and job.func_name == "worker.jobs.recommend"
