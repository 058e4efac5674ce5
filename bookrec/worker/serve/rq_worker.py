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
import threading
import time
from typing import Any, Callable, TypeVar

import redis
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
from bookrec.shared.redis_conn import Backoff, refuses_writes
from bookrec.worker.jobs import FUNCTIONS, refresh_chunk_failed
from bookrec.worker.serve import context, metrics

logger = logging.getLogger(__name__)

IDLE_SLICE_SECONDS = 0.25  # an idle worker wakes this often to take a due model swap (BLPOP accepts fractions)
MAX_FAILURE_LINE = 500  # characters kept of each line of a failed job's traceback
MAX_FAILURE_CHARS = 8000  # characters kept of a failed job's traceback (its end: the exception and its message)
HEARTBEAT_SECONDS = 1.0
"""How often a worker's heartbeat thread writes RQ's `last_heartbeat`, even in the middle of a long job."""
REFUSAL_LOG_SECONDS = 5.0  # a heartbeat or state write refused by Redis is logged at most this often

T = TypeVar("T")


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

    While Redis refuses writes (out of memory under noeviction, a read-only replica, MISCONF) the
    worker stays up: it takes no new job, and a job that could not record its start, result or
    failure waits, retrying with backoff, until Redis accepts writes again, so it is then finished,
    retried or failed with its reason instead of being left in the started registry. A thread
    writes the heartbeat every HEARTBEAT_SECONDS, so `bookrec status` can tell a stuck worker.
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
        self._backoff = Backoff(self.log)
        self._beating = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._refusal_logged_at = 0.0

    def bootstrap(self, *args, **kwargs) -> None:
        """RQ's bootstrap (registers the worker), then start the heartbeat thread."""
        super().bootstrap(*args, **kwargs)
        self._beat_thread = threading.Thread(target=self._beat, name="rq-heartbeat", daemon=True)
        self._beat_thread.start()

    def _beat(self) -> None:
        while not self._beating.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except redis.exceptions.RedisError:
                pass  # the worker loop's own Redis calls fail the same way and report it

    def teardown(self) -> None:
        """Stop the heartbeat thread, then unregister; a Redis refusing the unregistration is logged, not raised."""
        self._beating.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=5)
        try:
            super().teardown()
        except redis.exceptions.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            self.log.warning("Worker %s: could not unregister (%s); its record expires by itself", self.name, exc)

    def unsubscribe(self) -> None:
        """RQ's unsubscribe from the worker's command channel, in an order that cannot hang the stop.

        RQ sends UNSUBSCRIBE, then stops the listening thread, which redis-py 8 joins with no time limit. If the
        thread reads the UNSUBSCRIBE reply before the stop, it loops into a wait for a subscription of up to 60 s
        (RQ's sleep_time): seen on one stop in about seven after a Sentinel failover, each such worker then killed
        by the supervisor after 30 s. Stopping first means the reply ends the thread; the join is bounded anyway.
        """
        if not self.pubsub_thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        self.pubsub_thread.stop(timeout=0)
        try:
            self.pubsub.unsubscribe()
        except redis.exceptions.RedisError:
            pass  # the connection is gone: nothing to unsubscribe from, and the thread ends on the error
        self.pubsub_thread.join(timeout=1)
        self.pubsub.close()

    def _until_accepted(self, action: Callable[[], T], what: str) -> T:
        """Run `action` (a Redis write safe to repeat); while Redis refuses writes, retry it with backoff.

        Gives up (raising the refusal) only when the worker is asked to stop.
        """
        while True:
            try:
                result = action()
            except redis.exceptions.ResponseError as exc:
                if not refuses_writes(exc) or self._stop_requested:
                    raise
                self._backoff.pause(f"Worker {self.name}: Redis refuses writes while {what}", exc)
                continue
            self._backoff.reset()
            return result

    def _log_refusal(self, what: str, exc: BaseException) -> None:
        """Log a refused write that is skipped (heartbeat, state), at most once per REFUSAL_LOG_SECONDS."""
        if time.monotonic() - self._refusal_logged_at >= REFUSAL_LOG_SECONDS:
            self._refusal_logged_at = time.monotonic()
            self.log.warning("Worker %s: Redis refuses writes (%s); %s skipped, retried later", self.name, exc, what)

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's suspension check (a read in a transaction, which Redis refuses when out of memory), waiting meanwhile."""
        parent = super().check_for_suspension
        self._until_accepted(lambda: parent(burst), "checking for suspension")

    def run_maintenance_tasks(self) -> None:
        """RQ's registry maintenance, waiting while Redis refuses writes."""
        parent = super().run_maintenance_tasks
        self._until_accepted(parent, "cleaning registries")

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's execution record for `job`, waiting while Redis refuses writes (the job is already dequeued)."""
        parent = super().prepare_execution
        return self._until_accepted(lambda: parent(job), f"starting job {job.id}")

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """RQ's end-of-execution mark, waiting while Redis refuses writes."""
        parent = super().handle_execution_ended
        self._until_accepted(lambda: parent(job, queue, heartbeat_ttl), f"ending job {job.id}")

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution) -> None:
        """RQ's result write (one transaction, discarded whole when refused), waiting while Redis refuses writes."""
        parent = super().handle_job_success
        self._until_accepted(
            lambda: parent(job, queue, started_job_registry, execution), f"saving the result of job {job.id}"
        )

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry=None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """RQ's failure handling (retry or FAILED with the reason) once Redis accepts writes, with the traceback
        bounded (`bounded_failure`): a message quoting a huge value never makes a huge failure record.

        RQ logs and drops a failure it cannot write, which would leave the job in the started
        registry: so first wait until a write (this worker's heartbeat) goes through. A refresh
        chunk that fails for good adds its users to its refresh's `failed` counter.
        """
        self._until_accepted(self._write_heartbeat, f"recording the failure of job {job.id}")
        final = not job.should_retry or self._stopped_job_id == job.id
        super().handle_job_failure(job, queue, started_job_registry, bounded_failure(exc_string), execution)
        if final:
            self._until_accepted(lambda: refresh_chunk_failed(job), f"counting job {job.id}")

    def _write_heartbeat(self) -> None:
        """RQ's heartbeat, raising when Redis refuses it."""
        super().heartbeat()

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        """RQ's worker state (idle, busy); a write Redis refuses is logged and skipped (it is written again later)."""
        try:
            super().set_state(state, pipeline)
        except redis.exceptions.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            self._log_refusal("state update", exc)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's dequeue, in slices of IDLE_SLICE_SECONDS with `between_jobs` run before each (see the class).

        While Redis refuses writes (a dequeue is one), it waits with backoff and takes no job.
        """
        if self.between_jobs is not None:
            self.between_jobs()
        if (
            self.between_jobs is None or timeout is None or max_idle_time is not None
        ):  # burst mode: one non-blocking pop
            return self._dequeue(timeout, max_idle_time)
        while True:
            # With max_idle_time, RQ's loop gives up (None) after one BLPOP that found nothing.
            result = self._dequeue(IDLE_SLICE_SECONDS, IDLE_SLICE_SECONDS)
            if result is not None or self._stop_requested:
                return result
            self.between_jobs()

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """RQ's perform_job, with the job bound to the queue it was popped from: the allowlist checks that queue
        (`AllowlistedJob.func`), and the job's registries are that queue's whatever its hash says. Counted in the
        job metrics (worker/serve/metrics.py)."""
        job.dequeued_from = job.origin = queue.name
        started = time.perf_counter()
        succeeded = super().perform_job(job, queue, execution)
        metrics.job_ran(queue.name, succeeded, time.perf_counter() - started)
        return succeeded

    def _dequeue(self, timeout: int | float | None, max_idle_time: int | float | None) -> tuple[Job, Queue] | None:
        """One RQ dequeue, waiting with backoff while Redis refuses writes."""
        parent = super().dequeue_job_and_maintain_ttl
        return self._until_accepted(lambda: parent(timeout, max_idle_time), "waiting for a job")

    def request_stop(self, signum, frame) -> None:
        """Warm shutdown (finish the current job, then stop), remembered so the process does not resume."""
        self.stop_asked = True
        super().request_stop(signum, frame)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat in one round trip (RQ sends its three commands one by one, three times a job); if Redis
        lost this worker's record (it restarted empty, or was flushed), register the worker again with its state,
        so `bookrec status` lists it and its supervisor can hand its job back should it die. A heartbeat Redis
        refuses to write is logged (at most every REFUSAL_LOG_SECONDS) and skipped."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        try:
            self._beat_and_register(timeout)
        except redis.exceptions.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            self._log_refusal("heartbeat", exc)

    def _beat_and_register(self, timeout: int | None) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.hexists(self.key, "birth")
            pipe.hexists(self.key, "death")
            registered, declared_dead = pipe.execute()[-2:]
        if self.birth_date is not None and (declared_dead or not registered):
            self.log.warning(
                "Worker %s: %s; registering it again",
                self.name,
                "another supervisor took this worker for dead (silent too long) and handed its job back"
                if declared_dead
                else "Redis lost this worker's record",
            )
            with self.connection.pipeline() as pipe:
                pipe.hdel(self.key, "death")
                pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
                worker_registration.register(self, pipe)
                pipe.expire(self.key, timeout or self.worker_ttl + 60)
                pipe.execute()
