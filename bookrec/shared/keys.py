"""The Redis key schema: the one place key names are spelled. See the README's Redis contract."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "bookrec:"
QUEUE_RECOMMEND = "recommend"
QUEUE_REFRESH = "refresh"
QUEUE_RETRAIN = "retrain"
QUEUE_FRESH = "fresh"
SERVING_QUEUES = (QUEUE_RECOMMEND, QUEUE_FRESH, QUEUE_REFRESH)
"""The queues serving workers listen on, in the order they serve them: recommend requests first (a reader waits on
each, and each is small), then the recomputes after ratings (one fresh job takes every reader pending meanwhile, so
waiting makes it larger, not longer), then bulk refresh chunks."""
QUEUES = (QUEUE_FRESH, QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN)
"""The logical queue names (what `bookrec worker --queues` takes); `Keys.queue` gives each one's RQ name."""


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (default `bookrec:`)."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, name: str) -> str:
        """The RQ queue name of logical queue `name` (`fresh`, `recommend`, `refresh`, `retrain`) in this deployment.

        The default deployment keeps the bare names other services enqueue into (`Queue("recommend")`);
        any other prefix puts its queues under it (`staging:recommend`), so deployments sharing one Redis
        never take each other's jobs. RQ's registries (started, failed, ...) follow the queue name.
        """
        if name not in QUEUES:
            raise ValueError(f"unknown queue {name!r}; bookrec's queues are {', '.join(QUEUES)}")
        return name if self.prefix == DEFAULT_PREFIX else f"{self.prefix}{name}"

    def recs(self, user_id: str) -> str:
        """String key holding one user's cached recommendation list (JSON)."""
        return f"{self.prefix}recs:{user_id}"

    @property
    def recs_pattern(self) -> str:
        """SCAN pattern matching every cached list."""
        return f"{self.prefix}recs:*"

    @property
    def cache_n(self) -> str:
        """Integer: the length every cached list is computed at, the largest n asked for (at least BOOKREC_CACHE_N)."""
        return f"{self.prefix}cache:n"

    @property
    def model_current(self) -> str:
        """String key holding the production model version id."""
        return f"{self.prefix}model:current"

    @property
    def events(self) -> str:
        """Pub/sub channel for JSON events such as `model_promoted`."""
        return f"{self.prefix}events"

    @property
    def retrain_lock(self) -> str:
        """Lock held (with expiry) by the one retrain allowed at a time; its value is the job id."""
        return f"{self.prefix}lock:retrain"

    def swap_slot(self, slot: int) -> str:
        """Lock held (with expiry) by a worker loading a newly promoted model; its value is the worker's name.

        There are BOOKREC_SWAP_SLOTS of them (`lock:swap:0`, ...), so only that many workers load at once
        and the others keep serving at full speed.
        """
        return f"{self.prefix}lock:swap:{slot}"

    def worker(self, name: str) -> str:
        """Hash describing one live worker process (version loaded, pid, queues); expires if the worker dies."""
        return f"{self.prefix}worker:{name}"

    @property
    def worker_pattern(self) -> str:
        """SCAN pattern matching every live worker's hash."""
        return f"{self.prefix}worker:*"

    @property
    def status_probe(self) -> str:
        """Key `bookrec status` writes (with a 10 s expiry) to learn whether Redis accepts writes right now."""
        return f"{self.prefix}status:probe"

    def refresh_done(self, refresh_id: str) -> str:
        """Counter of users done by the chunks of one refresh."""
        return f"{self.prefix}refresh:{refresh_id}:done"

    def refresh_users(self, refresh_id: str) -> str:
        """How many users one refresh fanned out, written once by the fan-out (its chunks never write it)."""
        return f"{self.prefix}refresh:{refresh_id}:users"

    def refresh_failed(self, refresh_id: str) -> str:
        """Counter of users in the chunks of one refresh that failed for good (no retry left)."""
        return f"{self.prefix}refresh:{refresh_id}:failed"

    def retrain_cancel(self, job_id: str) -> str:
        """Flag asking the retrain `job_id` to stop: the trainer checks it between training steps and stages."""
        return f"{self.prefix}retrain:{job_id}:cancel"

    @property
    def retrain_last(self) -> str:
        """String key holding the id of the latest retrain job (the default of `bookrec retrain status`)."""
        return f"{self.prefix}retrain:last"

    @property
    def ratings_mark(self) -> str:
        """Epoch seconds (text): the newest `updated_at` counted when `bookrec scheduler`'s after-ratings check last
        enqueued a retrain; the check counts only ratings written after it (and after production's snapshot)."""
        return f"{self.prefix}schedule:ratings-mark"

    def cron_job(self, name: str) -> str:
        """The name of one of this deployment's entries in rq.cron's registries (`retrain-cron`,
        `retrain-after-ratings`); rq.cron's keys (`rq:cron_scheduler:…`, `rq:cron_job:{name}:jobs`) span every
        deployment of a Redis database, so the prefix keeps them apart."""
        return f"{self.prefix}{name}"

    @property
    def ratings_stream(self) -> str:
        """Stream any service XADDs rating events into (`user_id`, `book_id`, `rating`, optional `ts`, `event_id`, `op`)."""
        return f"{self.prefix}ratings"

    @property
    def ratings_dead(self) -> str:
        """Stream of the rating events the ingest refused: their original fields and a `reason`."""
        return f"{self.prefix}ratings:dead"

    def delta(self, user_id: str) -> str:
        """Hash of one reader's ratings the store took after the served version's snapshot (see shared/delta.py)."""
        return f"{self.prefix}delta:{user_id}"

    @property
    def delta_pattern(self) -> str:
        """SCAN pattern matching every reader's delta."""
        return f"{self.prefix}delta:*"

    @property
    def fresh_pending(self) -> str:
        """Sorted set of the readers waiting for a fresh recompute, by when they started waiting (shared/pending.py)."""
        return f"{self.prefix}fresh:pending"

    @property
    def fresh_queued(self) -> str:
        """String key set while a fresh job is queued that has not taken pending readers yet."""
        return f"{self.prefix}fresh:queued"

    def fresh_taken(self, job_id: str) -> str:
        """List of the readers one fresh job took from the pending set, until their lists are cached."""
        return f"{self.prefix}fresh:taken:{job_id}"

    @property
    def delta_pruned(self) -> str:
        """String key holding the production version the deltas were last pruned for (its snapshot covers the rest)."""
        return f"{self.prefix}delta-pruned"
