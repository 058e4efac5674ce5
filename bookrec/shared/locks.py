"""The retrain lock (`lock:retrain`): one retrain at a time, held by the job id that runs it.

The producer takes it when it enqueues a retrain (so a second request is refused at once), the
worker confirms it when the job starts and keeps it alive while training, and whoever holds it
releases it. It expires after BOOKREC_RETRAIN_LOCK_TTL seconds without renewal, so a lost
trainer never blocks retrains for good.

Beside it: `retrain:last` names the latest retrain (what `bookrec retrain status` shows by
default), and `retrain:{job}:cancel` asks a retrain to stop (the trainer checks it between
training steps and stages). A retrain's state is read from its RQ job: `queued` while it waits,
`running` once a trainer started it, then `finished`, `failed` or `cancelled`.
"""

from __future__ import annotations

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from bookrec.shared.errors import RetrainRunning
from bookrec.shared.jobs import RETRAIN_TTL
from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import delete_if_held, text

QUEUED, RUNNING, CANCELLING, FINISHED, FAILED, CANCELLED = (
    "queued",
    "running",
    "cancelling",
    "finished",
    "failed",
    "cancelled",
)
CANCELLED_STAGE = "cancelled"
"""The `stage` a trainer writes into the job's meta when it stops on a cancel request."""
_STATE_OF = {
    JobStatus.QUEUED: QUEUED,
    JobStatus.DEFERRED: QUEUED,
    JobStatus.SCHEDULED: QUEUED,
    JobStatus.STARTED: RUNNING,
    JobStatus.FINISHED: FINISHED,
    JobStatus.FAILED: FAILED,
    JobStatus.STOPPED: CANCELLED,
    JobStatus.CANCELED: CANCELLED,
}


class RetrainLock:
    """The retrain lock of one Redis, with expiry `ttl` seconds."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: int) -> None:
        self.client, self.keys, self.key, self.ttl = client, keys, keys.retrain_lock, ttl

    def take(self, job_id: str) -> None:
        """Take the lock for `job_id`, which must not be held (RetrainRunning names the holder if it is)."""
        if not self.client.set(self.key, job_id, nx=True, ex=self.ttl):
            raise RetrainRunning(self.holder() or "unknown")
        self._record_last(job_id)

    def hold(self, job_id: str) -> None:
        """Take the lock for `job_id`, or keep it if `job_id` already holds it; RetrainRunning if another job does."""
        if not self.client.set(self.key, job_id, nx=True, ex=self.ttl):
            holder = self.holder()
            if holder not in (None, job_id):
                raise RetrainRunning(holder)
            self.client.set(self.key, job_id, ex=self.ttl)
        self._record_last(job_id)

    def keep_alive(self) -> None:
        """Renew the lock's expiry (the holder calls this while it trains)."""
        self.client.expire(self.key, self.ttl)

    def release(self, job_id: str) -> bool:
        """Release the lock if `job_id` still holds it; True if it did."""
        return delete_if_held(self.client, self.key, job_id)

    def holder(self) -> str | None:
        """The job id holding the lock, or None."""
        return text(self.client.get(self.key))

    def latest(self) -> str | None:
        """The job holding the lock, else the latest retrain recorded (None if there is neither)."""
        return self.holder() or text(self.client.get(self.keys.retrain_last))

    def request_cancel(self, job_id: str) -> None:
        """Ask retrain `job_id` to stop at its trainer's next check (the flag outlives any retrain)."""
        self.client.set(self.keys.retrain_cancel(job_id), "1", ex=RETRAIN_TTL)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked retrain `job_id` to stop."""
        return bool(self.client.exists(self.keys.retrain_cancel(job_id)))

    def _record_last(self, job_id: str) -> None:
        self.client.set(self.keys.retrain_last, job_id, ex=RETRAIN_TTL)


def retrain_state(job: Job, cancel_requested: bool) -> str | None:
    """The retrain's state in plain words (see the module docstring); None if its job is no longer in Redis.

    A running retrain asked to stop is `cancelling` until its trainer's next check.
    """
    try:
        status = job.get_status(refresh=True)
    except (InvalidJobOperation, NoSuchJobError):
        return None
    state = _STATE_OF.get(status, str(status.value))
    if state == RUNNING and cancel_requested:
        return CANCELLING
    if state == FAILED and job.get_meta(refresh=True).get("stage") == CANCELLED_STAGE:
        return CANCELLED
    return state
