"""The retrain lock (`lock:retrain`): one retrain at a time, held by the job id that runs it.

The producer takes it when it enqueues a retrain (so a second request is refused at once), the
worker confirms it when the job starts and keeps it alive while training, and whoever holds it
releases it. It expires after BOOKREC_RETRAIN_LOCK_TTL seconds without renewal, so a lost
trainer never blocks retrains for good.
"""

from __future__ import annotations

import redis

from bookrec.shared.errors import RetrainRunning
from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import delete_if_held, text


class RetrainLock:
    """The retrain lock of one Redis, with expiry `ttl` seconds."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: int) -> None:
        self.client, self.key, self.ttl = client, keys.retrain_lock, ttl

    def take(self, job_id: str) -> None:
        """Take the lock for `job_id`, which must not be held (RetrainRunning names the holder if it is)."""
        if not self.client.set(self.key, job_id, nx=True, ex=self.ttl):
            raise RetrainRunning(self.holder() or "unknown")

    def hold(self, job_id: str) -> None:
        """Take the lock for `job_id`, or keep it if `job_id` already holds it; RetrainRunning if another job does."""
        if self.client.set(self.key, job_id, nx=True, ex=self.ttl):
            return
        holder = self.holder()
        if holder not in (None, job_id):
            raise RetrainRunning(holder)
        self.client.set(self.key, job_id, ex=self.ttl)

    def keep_alive(self) -> None:
        """Renew the lock's expiry (the holder calls this while it trains)."""
        self.client.expire(self.key, self.ttl)

    def release(self, job_id: str) -> bool:
        """Release the lock if `job_id` still holds it; True if it did."""
        return delete_if_held(self.client, self.key, job_id)

    def holder(self) -> str | None:
        """The job id holding the lock, or None."""
        return text(self.client.get(self.key))
