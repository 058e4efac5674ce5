"""bookrec's RQ worker: jobs run in the process that holds the model, and only bookrec's own job functions run.

RQ's default worker forks a child per job; TensorFlow is not fork-safe once loaded, so
`BookrecWorker` is a `SimpleWorker` (no fork). RQ would import and call any dotted function
path a job names; `AllowlistedJob` never imports: it looks the job's name up in `jobs.FUNCTIONS`
(the public names `worker.jobs.recommend|refresh|retrain`) and refuses every other name (and every
callback), so whoever can write to Redis cannot run code here.
"""

from __future__ import annotations

from typing import Callable

from redis.client import Pipeline
from rq import worker_registration
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from bookrec.worker.jobs import FUNCTIONS

IDLE_SLICE_SECONDS = 0.25  # an idle worker wakes this often to take a due model swap (BLPOP accepts fractions)


class JobNotAllowed(Exception):
    """A job named a function that is not one of bookrec's job functions."""


class AllowlistedJob(Job):
    """A Job that runs only allowlisted functions, with positional/keyword args from JSON, and no callbacks."""

    @property
    def func(self):
        """The allowlisted function the job names; JobNotAllowed for any other name (nothing is imported)."""
        function = FUNCTIONS.get(self.func_name) if self.instance is None else None
        if function is None:
            raise JobNotAllowed(
                f"refused to run {self.func_name!r}: bookrec workers run only {', '.join(sorted(FUNCTIONS))}"
            )
        return function

    # Callbacks are dotted paths stored in the job too; bookrec never sets them, so none ever runs.
    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None

    # Webhooks (RQ 3) are URLs stored in the job too: the worker would send HTTP requests wherever Redis says.
    # bookrec never sets them, so none is ever sent.
    @property
    def webhooks(self) -> list:
        return []

    @webhooks.setter
    def webhooks(self, value: list) -> None:
        pass


class BookrecWorker(SimpleWorker):
    """A non-forking RQ worker using the JSON serializer and `AllowlistedJob`.

    `between_jobs`, if given, runs before each dequeue (after every job, and every
    IDLE_SLICE_SECONDS while idle): the model swap happens there, never beside a job.
    """

    job_class = AllowlistedJob
    max_connection_wait_time = 5.0  # RQ backs off up to 60 s between reconnects: resume within 5 s of Redis returning
    log_result_lifespan = False  # one log line less per job

    def __init__(self, *args, between_jobs: Callable[[], object] | None = None, **kwargs) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", AllowlistedJob)
        # A recommend job's description is its whole call, up to 1,000 user ids: log job ids instead.
        kwargs.setdefault("log_job_description", False)
        super().__init__(*args, **kwargs)
        self.stop_asked = False
        self.between_jobs = between_jobs

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's dequeue, in slices of IDLE_SLICE_SECONDS with `between_jobs` run before each (see the class)."""
        if self.between_jobs is not None:
            self.between_jobs()
        if (
            self.between_jobs is None or timeout is None or max_idle_time is not None
        ):  # burst mode: one non-blocking pop
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while True:
            # With max_idle_time, RQ's loop gives up (None) after one BLPOP that found nothing.
            result = super().dequeue_job_and_maintain_ttl(IDLE_SLICE_SECONDS, max_idle_time=IDLE_SLICE_SECONDS)
            if result is not None or self._stop_requested:
                return result
            self.between_jobs()

    def request_stop(self, signum, frame) -> None:
        """Warm shutdown (finish the current job, then stop), remembered so the process does not resume."""
        self.stop_asked = True
        super().request_stop(signum, frame)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat in one round trip (RQ sends its three commands one by one, three times a job); if Redis
        lost this worker's record (it restarted empty), register the worker again, so `bookrec status` lists it
        and its supervisor can hand its job back should it die."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.hexists(self.key, "birth")
            registered = pipe.execute()[-1]
        if self.birth_date is not None and not registered:
            self.log.warning("Worker %s: Redis lost this worker's record; registering it again", self.name)
            with self.connection.pipeline() as pipe:
                pipe.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, pipe)
                pipe.expire(self.key, timeout or self.worker_ttl + 60)
                pipe.execute()
