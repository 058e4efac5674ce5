"""`bookrec.producer.Client`: what other services import to request, read and manage recommendations.

No TensorFlow here: a client enqueues JSON jobs into Redis and reads JSON entries back.

    from bookrec.producer import Client
    client = Client()                       # BOOKREC_REDIS_URL, or pass redis_url=
    client.recommend([1, 2, 3], n=10)       # job handles; wait=True returns the cache entries
    entry = client.get(1, n=10)             # CachedRecommendations (its top 10) or None
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from bookrec.shared import jobs as job_specs
from bookrec.shared import payloads, ratings, worker_state
from bookrec.shared.entries import MAX_ENTRY_BYTES, parse_entry, ratings_through, take
from bookrec.shared.errors import (
    BadEvent,
    JobFailed,
    MalformedEntry,
    NotReplicated,
    RefreshIncomplete,
    Timeout,
    ValidationError,
)
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, QUEUES, Keys
from bookrec.shared.locks import CANCELLED, CANCELLING, QUEUED, RUNNING, RetrainLock, retrain_state
from bookrec.shared.redis_conn import CONNECTION_ERRORS, connect, refuses_writes, refusing, text, unavailable
from bookrec.shared.settings import Settings

MAX_USERS_PER_CALL = 100_000
MAX_EVENTS_PER_CALL = 10_000
"""Rating events `Client.rate_many` sends in one call (one pipeline)."""
WAIT_BLOCK_S = 2  # seconds one result read blocks in Redis
RATED_POLL_FIRST_S = 0.001
RATED_POLL_MAX_S = 0.05
"""`wait_rated` reads the reader's entry after 1 ms, then 1.5 times longer each time, at most every 50 ms."""
FINISHED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
UNRESPONSIVE_AFTER_S = 5.0
"""A worker whose last heartbeat (written every second, even mid-job) is older than this is `unresponsive`."""
DEAD_AFTER_S = 60.0
"""A worker silent this long is presumed dead: `status` leaves it out and names it in a warning."""


def no_listener_warning(queue: str) -> str:
    """What to tell someone whose job went to `queue` while no live worker listens on it."""
    return f"no worker listens on '{queue}': start one with bookrec worker --queues {queue}"


def _as_list(values: Any) -> Any:
    """`values` as a list when it is an iterable of ids; a string, mapping or non-iterable as it is, for user_list to reject."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        return values
    return list(values)


@dataclass(frozen=True)
class CachedRecommendations:
    """A user's cached entry and whether the model that computed it is the one in production now."""

    entry: dict[str, Any]
    is_current: bool

    @property
    def items(self) -> list[dict[str, Any]]:
        """The recommended books, best first."""
        return self.entry["items"]


class Client:
    """Enqueue recommend/refresh/retrain jobs, read cached lists, manage production — over Redis only.

    Every method raises `bookrec.shared.errors.RedisUnavailable` (one clear exception type, no raw redis
    stack) when Redis does not answer, and ValidationError for bad arguments, before anything is enqueued.
    """

    def __init__(
        self, redis_url: str | None = None, settings: Settings | None = None, connection: redis.Redis | None = None
    ) -> None:
        settings = settings or Settings.from_env()
        self.settings = settings.with_overrides(redis_url=redis_url) if redis_url else settings
        self.keys = Keys(self.settings.key_prefix)
        self.redis = connection if connection is not None else connect(self.settings)

    def queue(self, name: str) -> Queue:
        """This deployment's RQ queue for logical queue `name` (`recommend`, `refresh`, `retrain`), JSON serializer."""
        return Queue(self.keys.queue(name), connection=self.redis, serializer=JSONSerializer)

    def recommend(
        self, user_ids: Sequence[int | str], n: int = 10, wait: bool = False, timeout: float | None = None
    ) -> list[Job] | list[dict[str, Any]]:
        """Request top-`n` lists for `user_ids`, in jobs of at most 1,000 users.

        A list with any invalid id is rejected whole (ValidationError naming it), nothing enqueued.
        Returns the job handles, or with `wait` the users' cache entries (in request order, each cut to
        its first `n` items) once every job has finished (JobFailed if one failed, Timeout after `timeout` s;
        MalformedEntry if a key holds something else than an entry, as `get`).
        """
        users = payloads.user_list(_as_list(user_ids), limit=MAX_USERS_PER_CALL)
        n = payloads.count_n(n)
        chunk = payloads.MAX_USERS_PER_JOB
        specs = [
            job_specs.recommend({"user_ids": users[i : i + chunk], "n": n}, self.settings)
            for i in range(0, len(users), chunk)
        ]
        jobs = self._call(lambda: self._enqueue(QUEUE_RECOMMEND, specs))
        if not wait:
            return jobs
        self.wait(jobs, timeout)
        keys = [self.keys.recs(u) for u in users]
        raw, _ = self._read_cache(keys)
        return [take(parse_entry(r, key), n) if r is not None else None for key, r in zip(keys, raw)]

    def get(self, user_id: int | str, n: int | None = None) -> CachedRecommendations | None:
        """The cached entry of one user, with whether its model is in production; None if there is none.

        With `n`, the entry's first `n` items (every list is computed at least as long as any request
        asked for), and None if the entry was computed shorter than `n`: request that length then.
        MalformedEntry (naming the key and the problem) if the key holds something else than a bookrec entry:
        not JSON, not of the entry's shape (`shared.entries`), over MAX_ENTRY_BYTES, or not a string.
        """
        key = self.keys.recs(payloads.user_id(user_id))
        n = None if n is None else payloads.count_n(n)
        (raw,), current = self._read_cache([key])
        if raw is None:
            return None
        entry = parse_entry(raw, key)
        entry = entry if n is None else take(entry, n)
        if entry is None:
            return None
        return CachedRecommendations(entry, entry.get("model_version") == text(current))

    def _read_cache(self, keys: list[str]) -> tuple[list[bytes | None], bytes | None]:
        """(the value of each cache key, None where absent; the production version) in one round trip.

        Each value is read only up to MAX_ENTRY_BYTES + 1 bytes (GETRANGE), so an oversized one costs no more
        than that and `parse_entry` refuses it; MalformedEntry for a key holding another type than a string.
        """

        def read() -> list[Any]:
            with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                    pipe.getrange(key, 0, MAX_ENTRY_BYTES)
                pipe.get(self.keys.model_current)
                replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and not _wrong_type(reply):
                    raise reply
            return replies

        *replies, current = self._call(read)
        values = []
        for key, exists, value in zip(keys, replies[0::2], replies[1::2]):
            if _wrong_type(value):
                raise MalformedEntry(f"{key} is not a bookrec entry: it holds another type than a string ({value})")
            values.append(value if exists else None)
        return values, None if _wrong_type(current) else current

    def rate(
        self,
        user_id: int | str,
        book_id: int | str,
        rating: float,
        ts: float | str | datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str | dict[str, Any]:
        """Add one rating event to the ratings stream; its stream id. BadEvent (a ValidationError) naming the
        bad field, nothing sent, if it breaks the stream's rules. Without `ts` the event's time is Redis's.
        With `wait`, return the reader's cached entry once it includes the rating (`wait_rated`)."""
        event = {"user_id": user_id, "book_id": book_id, "rating": rating, "ts": ts, "event_id": event_id}
        stream_id = self.rate_many([event])[0]
        return self.wait_rated(user_id, stream_id, timeout) if wait else stream_id

    def unrate(
        self,
        user_id: int | str,
        book_id: int | str,
        ts: float | str | datetime | None = None,
        event_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str | dict[str, Any]:
        """Add a delete event (the reader removed their rating of the book) to the ratings stream; its stream id, or
        with `wait` the reader's cached entry once it includes the removal (`wait_rated`)."""
        event = {"user_id": user_id, "book_id": book_id, "ts": ts, "event_id": event_id, "op": ratings.OP_DELETE}
        stream_id = self.rate_many([event])[0]
        return self.wait_rated(user_id, stream_id, timeout) if wait else stream_id

    def wait_rated(self, user_id: int | str, stream_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The reader's cached entry once it includes their rating event `stream_id` (its `ratings_through` is that
        id or a newer one): the ingest committed it and a worker on `fresh` recomputed the list. Timeout after
        `timeout` seconds (None: no limit); MalformedEntry if the key holds something else than an entry."""
        key = self.keys.recs(payloads.user_id(user_id))
        wanted = ratings.stream_id_key(stream_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = RATED_POLL_FIRST_S
        while True:
            (raw,), _ = self._read_cache([key])
            entry = None if raw is None else parse_entry(raw, key)
            through = None if entry is None else ratings_through(entry)
            if through is not None and through >= wanted:
                return entry
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"the cached list of user {user_id} did not include rating event {stream_id} within {timeout:g} s "
                    f"(it includes {entry and entry.get('ratings_through')}); is `bookrec ingest` running, and a "
                    "worker on the 'fresh' queue?"
                )
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
            pause = min(pause * 1.5, RATED_POLL_MAX_S)

    def rate_many(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add up to 10,000 rating events in one pipeline; their stream ids, in order.

        Each event is a mapping with `rate`'s arguments as keys (and `op`: `rate`, the default, or `delete`).
        Every event is checked before anything is sent: BadEvent naming the event's position and the bad
        field, or ValidationError for more than MAX_EVENTS_PER_CALL events, and nothing reaches the stream.
        """
        batch = _as_list(events)
        if isinstance(batch, (str, bytes, Mapping)) or not isinstance(batch, list):
            raise ValidationError(f"events must be a list of rating events, got {type(batch).__name__}")
        if len(batch) > MAX_EVENTS_PER_CALL:
            raise ValidationError(
                f"{len(batch):,} rating events in one call; at most {MAX_EVENTS_PER_CALL:,} are allowed"
            )
        fields = [self._checked_fields(i, event) for i, event in enumerate(batch)]

        def send() -> list[Any]:
            with self.redis.pipeline(transaction=False) as pipe:
                for entry in fields:
                    pipe.xadd(self.keys.ratings_stream, entry)
                return self._replicated(pipe, f"{len(fields)} rating event(s)")

        return [text(stream_id) for stream_id in self._call(send)] if fields else []

    def _checked_fields(self, position: int, event: Any) -> dict[str, str]:
        """The stream fields of the `position`-th event of a call, after the stream's own rules accepted them."""
        try:
            fields = _event_fields(event)
            ratings.parse_event(fields, None, 0, self.settings.rating_scale)
        except BadEvent as exc:
            raise BadEvent(f"rating event {position}: {exc.reason}") from None
        return fields

    def refresh(self, start: int | None = None, stop: int | None = None, n: int = 10) -> Job:
        """Enqueue a refresh of every known user's entry (or users[start:stop]); returns the refresh job."""
        kwargs = {
            "start": payloads.index_bound(start, "start"),
            "stop": payloads.index_bound(stop, "stop"),
            "n": payloads.count_n(n),
        }
        return self._call(lambda: self._enqueue(QUEUE_REFRESH, [job_specs.refresh(kwargs, self.settings)])[0])

    def refresh_progress(self, refresh_job: Job) -> tuple[int, int] | None:
        """(users done, users total) of a refresh whose fan-out has happened, else None.

        RefreshIncomplete when it can no longer finish (see `refresh_counts`), or its job vanished from Redis.
        """
        meta = self._call(lambda: refresh_job.get_meta(refresh=True))
        if "refresh_id" in meta:
            return self.refresh_counts(meta["refresh_id"], int(meta["users"]))
        if self._call(lambda: refresh_job.get_status(refresh=True)) is None:
            raise RefreshIncomplete(
                f"refresh job {refresh_job.id} vanished from Redis (flushed, or restarted empty); "
                "run `bookrec refresh` again"
            )
        return None

    def refresh_counts(self, refresh_id: str, users: int, seen: int = 0) -> tuple[int, int]:
        """(users done, `users`) of refresh `refresh_id` (its fan-out summary names both).

        RefreshIncomplete, naming how many users were not refreshed, when it can no longer finish: every
        chunk has ended but some failed for good, or its records vanished (Redis flushed or restarted empty,
        taking its chunks with them). `seen` is the last count the caller saw, for that message.
        """
        fanned_out, done, failed = self._call(
            lambda: self.redis.mget(
                [
                    self.keys.refresh_users(refresh_id),
                    self.keys.refresh_done(refresh_id),
                    self.keys.refresh_failed(refresh_id),
                ]
            )
        )
        if fanned_out is None:
            raise RefreshIncomplete(
                f"refresh {refresh_id} was lost with {users - seen} of {users} users not refreshed: its chunks and "
                "progress vanished from Redis (flushed, or restarted empty); run `bookrec refresh` again"
            )
        done, failed = int(done or 0), int(failed or 0)
        if failed and done + failed >= users:
            raise RefreshIncomplete(
                f"refresh {refresh_id} ended with {users - done} of {users} users not refreshed: chunks of {failed} "
                "users failed for good (their reasons are in the refresh queue's failed jobs, see `bookrec status`); "
                "run `bookrec refresh` again"
            )
        return done, users

    def retrain(
        self,
        model: str | None = None,
        force: bool = False,
        wait: bool = False,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
        ratings: str | None = None,
        books: str | None = None,
    ) -> Job | dict[str, Any]:
        """Enqueue a retrain (one at a time: RetrainRunning names the running job). With `wait`, return its result.

        `params` are checked against the kind's rules (known keys, types, ranges) before anything is
        enqueued. `ratings` None trains on one snapshot of the ratings store (the trainer's BOOKREC_DATABASE_URL);
        a name trains on that file in BOOKREC_DATA_DIR. `books` None uses BOOKREC_DATA_DIR's books.csv if it is
        there; a named books file must exist.
        """
        kind = payloads.model_kind(model)
        kwargs = {
            "model": kind,
            "params": payloads.hyper_params(params, kind),
            "ratings": None if ratings is None else payloads.data_file(ratings, "ratings"),
            "books": None if books is None else payloads.data_file(books, "books"),
            "force": bool(force),
        }
        job_id = uuid.uuid4().hex
        lock = RetrainLock(self.redis, self.keys, self.settings.retrain_lock_ttl)
        self._call(lambda: lock.take(job_id))
        try:
            job = self._call(lambda: self._enqueue(QUEUE_RETRAIN, [job_specs.retrain(kwargs, job_id)])[0])
        except BaseException:
            self._call(lambda: lock.release(job_id))
            raise
        if not wait:
            return job
        return self.wait([job], timeout)[0]

    def promote(self, version: str, reason: str = "manual", force: bool = False) -> dict[str, Any]:
        """Put a stored version in production (store record, pointer, event) and schedule a refresh of every
        cached list; returns the event with the refresh job's id as `refresh_job`. A version trained on another
        catalogue than production's is refused (CatalogueMismatch) unless `force`."""
        from bookrec.model_store.promotion import promote
        from bookrec.model_store.store import ModelStore

        store = ModelStore(self.settings.model_store)
        return self._call(
            lambda: promote(store, self.redis, self.keys, version, reason, refresh=self.settings, force=force)
        )

    def rollback(self) -> dict[str, Any]:
        """Promote the version that was in production before the current one and schedule a refresh, as `promote`."""
        from bookrec.model_store.promotion import rollback
        from bookrec.model_store.store import ModelStore

        return self._call(
            lambda: rollback(ModelStore(self.settings.model_store), self.redis, self.keys, refresh=self.settings)
        )

    def wait(self, jobs: Iterable[Job], timeout: float | None = None) -> list[Any]:
        """Block until every job has finished; return their return values (JobFailed with the worker's reason)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        for job in jobs:
            results.append(self._wait_one(job, deadline))
        return results

    def _wait_one(self, job: Job, deadline: float | None) -> Any:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"job {job.id} did not finish in time (status: {job.get_status().value})")
            # Block well under the connection's 5 s socket timeout, or the read times out before the server answers.
            block = WAIT_BLOCK_S if remaining is None else max(1, min(WAIT_BLOCK_S, int(remaining + 0.999)))
            result = self._call(lambda: job.latest_result(timeout=block))
            if result is not None and result.type == Result.Type.SUCCESSFUL:
                # The result decides, not the job's status: after a Sentinel failover the new master can hold a
                # worker's result while the status it wrote in the same breath was lost with the old master.
                return result.return_value
            status = self._call(lambda: job.get_status(refresh=True))
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                reason = (
                    result.exc_string.strip().splitlines()[-1]
                    if result is not None and result.exc_string
                    else status.value
                )
                raise JobFailed(f"job {job.id} {status.value}: {reason}")
            if status is None:
                raise JobFailed(f"job {job.id} no longer exists in Redis (expired or deleted)")
            if result is not None and result.type != Result.Type.SUCCESSFUL:
                time.sleep(0.05)  # a failed try that RQ is retrying: its next result has not been written yet

    def status(self) -> dict[str, Any]:
        """Queues and lengths, workers and the version each serves, production version, cache size, readers waiting
        for a fresh recompute, failed jobs."""
        from rq.registry import FailedJobRegistry

        def collect() -> dict[str, Any]:
            refused = self._refused_writes()  # RQ's registry count cleans up (a write) only when Redis takes writes
            queues = {
                name: {
                    "rq_name": self.keys.queue(name),
                    "queued": self.queue(name).count,
                    "failed": FailedJobRegistry(
                        self.keys.queue(name), connection=self.redis, serializer=JSONSerializer
                    ).get_job_count(cleanup=refused is None),
                    "workers": len(self.listeners(name)),
                }
                for name in QUEUES
            }
            seconds, micro = self.redis.time()
            workers, silent = [], []
            for worker in self._workers():
                age = _heartbeat_age(worker, seconds + micro / 1e6)
                if age is not None and age > DEAD_AFTER_S and refused is None:
                    silent.append(f"{worker.name} ({age:.0f} s)")
                    continue
                state = worker_state.read(self.redis, self.keys, worker.name)
                late = refused is None and (age is None or age > UNRESPONSIVE_AFTER_S)
                workers.append(
                    {
                        "name": worker.name,
                        "state": "unresponsive" if late else str(worker.get_state()),
                        "heartbeat_age_s": None if age is None else round(age, 1),
                        "queues": [q.name for q in worker.queues],
                        "model_version": state.get("version") or None,
                        "pending_version": state.get("pending_version") or None,
                        "load_error": state.get("load_error") or None,
                        "current_job": _current_job(worker),
                        "pid": worker.pid,
                        "hostname": worker.hostname,
                    }
                )
            listed = {w["name"] for w in workers}
            waiting = (
                _waiting_worker(s) for s in worker_state.read_all(self.redis, self.keys) if s["name"] not in listed
            )
            workers += [w for w in waiting if w is not None]
            current = self.redis.get(self.keys.model_current)
            lock = RetrainLock(self.redis, self.keys, self.settings.retrain_lock_ttl)
            retrain = lock.holder()
            return {
                "redis": self.settings.redis_endpoint,
                "redis_writes": "accepted" if refused is None else "refused",
                "production_version": current.decode() if current else None,
                "queues": queues,
                "workers": sorted(workers, key=lambda w: w["name"]),
                "cache_entries": sum(1 for _ in self.redis.scan_iter(match=self.keys.recs_pattern, count=1000)),
                "fresh_pending": self.redis.zcard(self.keys.fresh_pending),
                "failed_jobs": sum(q["failed"] for q in queues.values()),
                "retrain_running": retrain,
                "retrain": None if retrain is None else {"job": retrain, "state": self._retrain_state(lock, retrain)},
                "warnings": [
                    f"{no_listener_warning(name)} ({q['queued']} job(s) waiting)"
                    for name, q in queues.items()
                    if q["queued"] and not q["workers"]
                ]
                + _liveness_warnings(refused, silent)
                + [_load_warning(w) for w in sorted(workers, key=lambda w: w["name"]) if w["load_error"]],
            }

        return self._call(collect)

    def _refused_writes(self) -> str | None:
        """None if Redis accepts a write now (a 10 s probe key), else the RedisRefusingWrites message saying why not."""
        try:
            self.redis.set(self.keys.status_probe, "1", ex=10)
        except redis.exceptions.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            return str(refusing(self.settings, exc))
        return None

    def _workers(self) -> list:
        """This deployment's RQ workers: those listening on its queues (RQ's `rq:workers` set holds every deployment's)."""
        from rq.worker import Worker

        found = {}
        for name in QUEUES:
            for worker in Worker.all(queue=self.queue(name), serializer=JSONSerializer):
                found.setdefault(worker.name, worker)
        return list(found.values())

    def listeners(self, queue: str) -> list[str]:
        """The names of the live workers listening on `queue` (`recommend`, `refresh` or `retrain`)."""
        from rq.worker import Worker

        return self._call(
            lambda: sorted(w.name for w in Worker.all(queue=self.queue(queue), serializer=JSONSerializer))
        )

    def retrain_status(self, job_id: str | None = None) -> dict[str, Any]:
        """A retrain's state, stage, epoch, loss and ETA, and once it finished the gate's decision with both metrics.

        `job_id` defaults to the running (or queued) retrain, else the latest one; ValidationError if there is none.
        `state` is `queued`, `running`, `cancelling`, `finished`, `failed` or `cancelled`.
        """
        lock = RetrainLock(self.redis, self.keys, self.settings.retrain_lock_ttl)
        job = self._retrain_job(lock, job_id)

        def collect() -> dict[str, Any]:
            meta, result = job.get_meta(refresh=True), job.latest_result()
            value = result.return_value if result is not None and result.type == Result.Type.SUCCESSFUL else None
            error = result.exc_string.strip().splitlines()[-1] if result is not None and result.exc_string else None
            return {
                "job": job.id,
                "state": self._retrain_state(lock, job.id),
                **{key: meta.get(key) for key in ("stage", "epoch", "epochs", "loss", "eta_s")},
                "enqueued_at": _iso(job.enqueued_at),
                "started_at": _iso(job.started_at),
                "ended_at": _iso(job.ended_at),
                "version": value and value.get("version"),
                "promoted": value and value.get("promoted"),
                "decision": value and value.get("decision"),
                "production_version": value and value["production"]["version"],
                "error": error,
            }

        return self._call(collect)

    def cancel_retrain(self, job_id: str | None = None) -> dict[str, Any]:
        """Cancel a queued or running retrain (default: the one holding the lock); returns {"job", "was", "state"}.

        A queued one is cancelled with RQ's own cancel and its lock released at once (`state` "cancelled"); a
        running one is asked to stop through `retrain:{job}:cancel` and stops at its trainer's next epoch or step,
        releasing the lock itself (`state` "cancelling" until then). ValidationError if it has already ended.
        """
        lock = RetrainLock(self.redis, self.keys, self.settings.retrain_lock_ttl)
        job = self._retrain_job(lock, job_id or self._call(lock.holder))

        def cancel() -> dict[str, Any]:
            was = retrain_state(job, lock.cancel_requested(job.id))
            if was not in (QUEUED, RUNNING, CANCELLING):
                raise ValidationError(f"retrain {job.id} is {was}; there is nothing to cancel")
            lock.request_cancel(job.id)  # first, so a trainer taking the job meanwhile stops at its first check
            if was == QUEUED and job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.DEFERRED):
                job.cancel()
            state = retrain_state(job, True)
            if state == CANCELLED:
                lock.release(job.id)
            return {"job": job.id, "was": was, "state": state}

        return self._call(cancel)

    def _retrain_job(self, lock: RetrainLock, job_id: str | None) -> Job:
        """The RQ job of retrain `job_id` (default: the running or latest one); ValidationError if there is none."""
        days = job_specs.RETRAIN_TTL // 86400
        job_id = job_id or self._call(lock.latest)
        if job_id is None:
            raise ValidationError(
                f"no retrain found: none is queued or running and none ended in the last {days} days; "
                "start one with `bookrec retrain`"
            )
        try:
            job = self._call(lambda: Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer))
        except NoSuchJobError:
            raise ValidationError(f"no job {job_id!r} in Redis (a retrain is kept {days} days after it ends)") from None
        if job.func_name != job_specs.RETRAIN:
            raise ValidationError(f"job {job_id!r} is not a retrain (it runs {job.func_name})")
        return job

    def _retrain_state(self, lock: RetrainLock, job_id: str) -> str | None:
        return retrain_state(
            Job(job_id, connection=self.redis, serializer=JSONSerializer), lock.cancel_requested(job_id)
        )

    def _enqueue(self, queue: str, specs: list) -> list[Job]:
        """Enqueue `specs` on `queue`; with BOOKREC_REDIS_WAIT_REPLICAS, once that many replicas have them."""
        if not self.settings.redis_wait_replicas:
            return self.queue(queue).enqueue_many(specs)
        with self.redis.pipeline(transaction=False) as pipe:
            jobs = self.queue(queue).enqueue_many(specs, pipeline=pipe)
            self._replicated(pipe, f"{len(specs)} {queue} job(s)")
        return jobs

    def _replicated(self, pipe: redis.client.Pipeline, what: str) -> list[Any]:
        """Execute `pipe`, followed by a WAIT for BOOKREC_REDIS_WAIT_REPLICAS replicas when that is set, on the same
        connection; the replies of `pipe`'s own commands. NotReplicated if fewer replicas confirmed in time."""
        wanted = self.settings.redis_wait_replicas
        if not wanted:
            return pipe.execute()
        pipe.execute_command("WAIT", wanted, self.settings.redis_wait_ms)
        *replies, confirmed = pipe.execute()
        if confirmed < wanted:
            raise NotReplicated(
                f"{what} reached Redis at {self.settings.redis_endpoint} but only {confirmed} of the {wanted} replicas "
                f"BOOKREC_REDIS_WAIT_REPLICAS asks for confirmed within {self.settings.redis_wait_ms} ms; a failover "
                "could lose them: send them again (repeating a rating event or a request is harmless)"
            )
        return replies

    def _call(self, action):
        """Run a Redis action, turning connection failures into RedisUnavailable and refused writes (out of
        memory, a read-only replica, MISCONF) into RedisRefusingWrites."""
        try:
            return action()
        except CONNECTION_ERRORS as exc:
            raise unavailable(self.settings, exc) from None
        except redis.exceptions.ResponseError as exc:
            if refuses_writes(exc):
                raise refusing(self.settings, exc) from None
            raise


def _event_fields(event: Any) -> dict[str, str]:
    """The stream fields of one rating event given as a mapping of `Client.rate`'s arguments (None: absent)."""
    if not isinstance(event, Mapping):
        raise BadEvent(f"a rating event must be a mapping of fields, got {type(event).__name__}")
    unknown = sorted(str(key) for key in event if key not in ratings.FIELDS)
    if unknown:
        raise BadEvent(f"unknown field(s) {', '.join(payloads.shown(k) for k in unknown[:5])}")
    return {name: _field_text(name, value) for name, value in event.items() if value is not None}


def _field_text(name: str, value: Any) -> str:
    """One field's value as the stream carries it: ids and op as text, numbers in their shortest form, times ISO."""
    if isinstance(value, bool):
        raise BadEvent(f"{name} {payloads.shown(value)} is a bool")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float)):
        return ratings.number_text(value) if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value
    raise BadEvent(f"{name} {payloads.shown(value)} is a {type(value).__name__}, not a number or a string")


def _heartbeat_age(worker: Any, now: float) -> float | None:
    """Seconds since an RQ worker's last heartbeat, by Redis's clock (None if it never sent one)."""
    return None if worker.last_heartbeat is None else max(0.0, now - worker.last_heartbeat.timestamp())


def _current_job(worker: Any) -> str | None:
    """The id of the job an RQ worker holds; None when idle, or unknown because Redis is out of memory (RQ reads
    it in a transaction, and Redis then refuses every command queued in one, reads too)."""
    try:
        return worker.get_current_job_id()
    except redis.exceptions.ResponseError as exc:
        if not refuses_writes(exc):
            raise
        return None


def _liveness_warnings(refused: str | None, silent: list[str]) -> list[str]:
    """What `status` says about Redis refusing writes and about workers presumed dead."""
    warnings = []
    if refused is not None:
        warnings.append(f"{refused}; workers wait and retry meanwhile, so heartbeats are not judged")
    if silent:
        warnings.append(
            f"left out {len(silent)} worker(s) silent for over {DEAD_AFTER_S:.0f} s, presumed dead: {', '.join(silent)}"
        )
    return warnings


def _wrong_type(reply: Any) -> bool:
    """Whether a pipeline reply is Redis's WRONGTYPE error (the key holds a hash, a list...)."""
    return isinstance(reply, redis.exceptions.ResponseError) and str(reply).startswith("WRONGTYPE")


def _iso(moment: Any) -> str | None:
    """A job timestamp as ISO 8601 text (None when unset)."""
    return moment.isoformat() if moment is not None else None


def _waiting_worker(state: dict[str, str]) -> dict[str, Any] | None:
    """A worker process not serving yet (no model loaded, so not an RQ worker yet), from its worker hash, as
    `status` lists workers; None for a hash with a version (a worker that died: its hash is about to expire)."""
    if state.get("version"):
        return None
    return {
        "name": state["name"],
        "state": "waiting",
        "queues": [q for q in state.get("queues", "").split(",") if q],
        "model_version": None,
        "pending_version": state.get("pending_version") or None,
        "load_error": state.get("load_error") or None,
        "current_job": None,
        "pid": int(state["pid"]) if state.get("pid", "").isdigit() else None,
        "hostname": state.get("host") or None,
    }


def _load_warning(worker: dict[str, Any]) -> str:
    """The status warning for a worker that cannot serve production."""
    pending = worker["pending_version"]
    doing = f"cannot load {pending}" if pending else "is not serving"
    return f"worker {worker['name']} {doing}: {worker['load_error']}"
