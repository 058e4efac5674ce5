"""bookrec's RQ worker: jobs run in the process that holds the model, and only bookrec's own job functions run.

RQ's default worker forks a child per job; TensorFlow is not fork-safe once loaded, so
`BookrecWorker` is a `SimpleWorker` (no fork). RQ would import and call any dotted function
path a job names; `AllowlistedJob` never imports: it looks the job's name up in `jobs.FUNCTIONS`
(the public names `worker.jobs.recommend|refresh|retrain`) and refuses every other name (and every
callback), so whoever can write to Redis cannot run code here. Each name runs only on its own queues
(`shared.jobs.RUNS_ON`), and a job hash RQ cannot read (no `data`, a timeout that is not a number, any
unreadable field) fails that one job with its reason instead of stopping the worker.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from redis.client import Pipeline
from rq import worker_registration
from rq.exceptions import TimeoutFormatError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import as_text, decode_redis_hash, parse_timeout
from rq.worker import SimpleWorker

from bookrec.shared import jobs
from bookrec.shared.payloads import shown
from bookrec.worker.jobs import FUNCTIONS
from bookrec.worker.serve import context

logger = logging.getLogger(__name__)

IDLE_SLICE_SECONDS = 0.25  # an idle worker wakes this often to take a due model swap (BLPOP accepts fractions)
MAX_FAILURE_LINE = 500  # characters kept of each line of a failed job's traceback
MAX_FAILURE_CHARS = 8000  # characters kept of a failed job's traceback (its end: the exception and its message)


class JobNotAllowed(Exception):
    """A job named a function that is not one of bookrec's job functions, or arrived on a queue it may not run on."""


class MalformedJob(Exception):
    """A job hash that is not a job RQ wrote: no `data` field, a timeout that is not a number, an unreadable field."""


def bounded_timeout(job_id: str, raw: Any) -> int | None:
    """A job hash's `timeout` as seconds from 1 to `jobs.MAX_TIMEOUT` (None when unset: RQ's default applies).

    Outside that range (RQ's -1 means no limit) it is clamped to MAX_TIMEOUT, with a warning; MalformedJob
    if it is not a number of seconds in one of RQ's forms (`600`, `10m`, `1h`).
    """
    if not raw:
        return None
    try:
        seconds = parse_timeout(as_text(raw))
    except (ValueError, TimeoutFormatError):
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        raise MalformedJob(f"timeout {shown(text)} is not a number of seconds") from None
    if 1 <= seconds <= jobs.MAX_TIMEOUT:
        return seconds
    logger.warning(
        "job %s: timeout %s s is outside 1 to %d s; clamped to %d s",
        job_id,
        shown(seconds),
        jobs.MAX_TIMEOUT,
        jobs.MAX_TIMEOUT,
    )
    return jobs.MAX_TIMEOUT


def clamp_ttls(job_id: str, fields: dict[str, Any]) -> None:
    """Clamp a job hash's `result_ttl`, `failure_ttl` and `ttl` to `jobs.MAX_TTL` (with a warning), in place: Redis
    refuses an expiry past its range, and RQ's bookkeeping would fail on it after the job ran. A value that is
    not a whole number is left for RQ to refuse."""
    for field in ("result_ttl", "failure_ttl", "ttl"):
        try:
            seconds = int(fields[field])
        except (KeyError, ValueError):
            continue
        if seconds > jobs.MAX_TTL:
            logger.warning("job %s: %s %s s is over %d s; clamped to it", job_id, field, shown(seconds), jobs.MAX_TTL)
            fields[field] = str(jobs.MAX_TTL)


def bounded_failure(exc_string: str) -> str:
    """A failed job's traceback cut to a size fit for Redis and `bookrec status`: each line to MAX_FAILURE_LINE
    characters, the whole to its last MAX_FAILURE_CHARS (the last line, the exception and its reason, is kept)."""
    lines = [
        line if len(line) <= MAX_FAILURE_LINE else line[:MAX_FAILURE_LINE] + "…" for line in exc_string.split("\n")
    ]
    text = "\n".join(lines)
    return text if len(text) <= MAX_FAILURE_CHARS else "…" + text[-MAX_FAILURE_CHARS:]


class AllowlistedJob(Job):
    """A Job that runs only allowlisted functions, on their own queues, with args from JSON, and no callbacks."""

    refusal: Exception | None = None  # set when the hash is not a job bookrec can run: running it raises this
    dequeued_from: str | None = None  # the RQ queue a BookrecWorker popped the job from (never the job's own word)

    def restore(self, raw_data: dict) -> None:
        """RQ's restore, for a hash anyone may have written: the timeout and TTLs are bounded (`bounded_timeout`,
        `clamp_ttls`), and a hash RQ cannot read becomes a job whose run fails with MalformedJob naming the
        problem (RQ would raise here and stop the worker, or drop a hash without `data` without a word)."""
        fields = decode_redis_hash(raw_data)
        try:
            if "data" not in fields:
                raise MalformedJob("the job hash has no 'data' field")
            timeout = bounded_timeout(self.id, fields.pop("timeout", None))
            clamp_ttls(self.id, fields)
            super().restore(fields)
        except Exception as exc:
            self._refuse(exc)
            return
        self.timeout = timeout
        self.refusal = None

    def _refuse(self, exc: Exception) -> None:
        """Become a job that fails with `exc`'s reason: nothing of the unreadable hash is kept but its id."""
        reason = str(exc) if isinstance(exc, MalformedJob) else f"RQ cannot read it ({type(exc).__name__}: {exc})"
        super().restore({"data": self.serializer.dumps((None, None, [], {}))})
        self.failure_ttl = jobs.FAILURE_TTL
        self.refusal = MalformedJob(f"job {self.id} is not a job bookrec can run: {reason[:300]}")
        logger.warning("%s", self.refusal)

    @property
    def func(self) -> Callable[..., Any]:
        """The allowlisted function the job names, if it may run on the queue it came from; else the reason
        (MalformedJob, JobNotAllowed) is raised and the job fails with it. Nothing is ever imported."""
        if self.refusal is not None:
            raise self.refusal
        function = FUNCTIONS.get(self.func_name) if self.instance is None else None
        if function is None:
            raise JobNotAllowed(
                f"refused to run {shown(self.func_name)}: bookrec workers run only {', '.join(sorted(FUNCTIONS))}"
            )
        keys = context.get().keys
        allowed = [keys.queue(name) for name in jobs.RUNS_ON[self.func_name]]
        if self.dequeued_from not in allowed:
            raise JobNotAllowed(
                f"refused to run {self.func_name!r} from queue {self.dequeued_from!r}: "
                f"it runs only on {' or '.join(repr(q) for q in allowed)}"
            )
        return function

    @property
    def should_retry(self) -> bool:
        """RQ's retry rule, except that a refused job is never retried: it would be refused again."""
        return self.refusal is None and super().should_retry

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

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """RQ's perform_job, with the job bound to the queue it was popped from: the allowlist checks that queue
        (`AllowlistedJob.func`), and the job's registries are that queue's whatever its hash says."""
        job.dequeued_from = job.origin = queue.name
        return super().perform_job(job, queue, execution)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry=None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """RQ's failure handling with the traceback bounded (`bounded_failure`): a message quoting a huge value
        never makes a huge failure record."""
        super().handle_job_failure(job, queue, started_job_registry, bounded_failure(exc_string), execution)

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
