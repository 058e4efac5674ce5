"""A dead worker's job goes back to its queue, whichever moment the worker died at.

RQ claims a job in two steps: an execution in the started registry (the worker now names the
job as its current one), then the job's status STARTED. The worker here is a real
`BookrecWorker` on fakeredis, stopped between or after those steps as a SIGKILL would stop it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import datetime, timezone

import fakeredis
import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH
from bookrec.worker.serve import supervisor
from bookrec.worker.serve.rq_worker import BookrecWorker
from bookrec.worker.serve.supervisor import Recovery, recover_abandoned

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


# A supervisor that starts after a whole pool died (its supervisor too) never saw those workers die:
# `Recovery` finds their jobs from Redis alone.


def process_gone() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def process_named(name: str) -> subprocess.Popen:
    """A live process whose command line names worker `name`, as a real worker's does."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)", "--name", name],
        stdout=subprocess.PIPE,
    )
    assert process.stdout.readline() == b"up\n"
    return process


def registered(redis, worker: BookrecWorker, pid: int, host: str = socket.gethostname()) -> None:
    """Make RQ's record of `worker` say it runs as `pid` on `host`."""
    redis.hset(worker.key, mapping={"pid": pid, "hostname": host})


def pop_without_claiming(redis) -> tuple[Queue, str]:
    """Enqueue a job and pop it as a worker's BLPOP does, then 'die' before registering its execution."""
    queue = Queue(QUEUE_RECOMMEND, connection=redis, serializer=JSONSerializer)
    job = queue.enqueue(JOB, ["1"], retry=Retry(max=2))
    queue.enqueue(JOB, ["2"])
    refresh = Queue(QUEUE_REFRESH, connection=redis, serializer=JSONSerializer)
    popped, _ = Queue.dequeue_any([queue, refresh], None, connection=redis, serializer=JSONSerializer)
    assert popped.id == job.id and job.id not in queue.job_ids
    return queue, job.id


def test_a_job_popped_by_a_worker_that_died_before_claiming_it_goes_back_after_a_second_sweep(redis) -> None:
    queue, job_id = pop_without_claiming(redis)
    recovery = Recovery(redis, [QUEUE_RECOMMEND, QUEUE_REFRESH])

    assert recovery.sweep() == [], "handed back at the first sight: a live worker may be registering it right now"
    assert job_id not in queue.job_ids
    assert recovery.sweep() == [job_id]
    assert queue.job_ids[0] == job_id
    job = queue.fetch_job(job_id)
    assert job.get_status() == JobStatus.QUEUED and job.retries_left == 2
    assert recovery.sweep() == [] and queue.job_ids.count(job_id) == 1


def test_after_a_worker_dies_the_two_sweeps_come_within_seconds_not_at_the_next_interval(
    redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue, job_id = pop_without_claiming(redis)
    clock = [1000.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])
    recovery = Recovery(redis, [QUEUE_RECOMMEND, QUEUE_REFRESH], next_sweep=clock[0] + supervisor.RECOVERY_INTERVAL)
    assert recovery.sweep_if_due() == []  # not due: the last sweep was just now

    recovery.sweep_soon()  # the supervisor saw a worker exit
    assert recovery.sweep_if_due() == []  # at once: suspected
    clock[0] += supervisor.CLAIM_GRACE_SECONDS
    assert recovery.sweep_if_due() == [job_id] and queue.job_ids[0] == job_id


def test_jobs_of_dead_workers_of_this_host_go_back_whichever_claim_step_they_died_at(redis) -> None:
    queue, unstarted = claimed_by_a_dead_worker(redis, started=False)
    registered(redis, BookrecWorker([queue], connection=redis, name="dead-worker"), process_gone())
    other = Queue(QUEUE_REFRESH, connection=redis, serializer=JSONSerializer)
    started_job = other.enqueue(JOB, ["3"], retry=Retry(max=2))
    worker = BookrecWorker([other], connection=redis, name="dead-worker-2")
    worker.register_birth()
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=None)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    redis.delete(worker.key)  # its record expired: RQ no longer knows the worker at all

    recovered = Recovery(redis, [QUEUE_RECOMMEND, QUEUE_REFRESH]).sweep()

    assert sorted(recovered) == sorted([unstarted.id, started_job.id])
    assert queue.job_ids[0] == unstarted.id and started_job.id in other.job_ids
    for name in (QUEUE_RECOMMEND, QUEUE_REFRESH):
        assert StartedJobRegistry(name, connection=redis).get_job_ids() == []


def test_jobs_of_live_workers_here_and_of_workers_on_other_hosts_are_left_alone(redis) -> None:
    queue, job = claimed_by_a_dead_worker(redis, started=True)
    live = process_named("dead-worker")  # the name of claimed_by_a_dead_worker's worker: alive after all
    try:
        registered(redis, BookrecWorker([queue], connection=redis, name="dead-worker"), live.pid)
        recovery = Recovery(redis, [QUEUE_RECOMMEND])
        assert recovery.sweep() == [] and recovery.sweep() == []
        registered(redis, BookrecWorker([queue], connection=redis, name="dead-worker"), process_gone(), "elsewhere")
        assert recovery.sweep() == [], "a worker on another host is alive while RQ has its record"
        assert StartedJobRegistry(QUEUE_RECOMMEND, connection=redis).get_job_ids() == [job.id]
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize(("host", "silent_s", "dead"), [("other-host", 30, True), ("other-host", 5, False)])
def test_a_worker_of_another_host_is_dead_once_silent_for_worker_silent_s(
    redis: fakeredis.FakeRedis, host: str, silent_s: float, dead: bool
) -> None:
    """Another host's process cannot be looked at: its heartbeat's age, by Redis's clock, decides."""
    from rq.utils import utcformat

    seconds, _ = redis.time()
    beat = utcformat(datetime.fromtimestamp(seconds - silent_s, timezone.utc))
    redis.hset("rq:worker:far", mapping={"hostname": host, "pid": "1", "last_heartbeat": beat})
    assert supervisor.worker_is_dead(redis, "far", socket.gethostname()) is dead


def test_a_worker_taken_for_dead_registers_again_at_its_next_heartbeat(redis: fakeredis.FakeRedis) -> None:
    worker = BookrecWorker([QUEUE_RECOMMEND], connection=redis, name="came-back")
    worker.register_birth()
    redis.hset(worker.key, "death", "2026-12-04T00:00:00.000000Z")  # what recover_abandoned's register_death writes
    worker.heartbeat()
    assert not redis.hexists(worker.key, "death") and redis.hexists(worker.key, "birth")
    assert worker.key.encode() in redis.smembers("rq:workers"), "listed again, so its job can be recovered again"
