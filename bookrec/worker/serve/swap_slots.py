"""Swap slots: a few expiring Redis locks that bound how many workers load a newly promoted model at once.

While a worker loads, it holds a slot (`lock:swap:N`, its value the worker's name); the others keep
serving. A slot outlives a dead holder by at most SLOT_TTL_SECONDS, and its supervisor gives it
back at once. No TensorFlow here: the supervisor imports this module.
"""

from __future__ import annotations

import logging
import time

import redis

from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import delete_if_held

logger = logging.getLogger(__name__)

SLOT_TTL_SECONDS = 60  # a worker that dies while loading holds its slot at most this long
SLOT_RETRY_SECONDS = 0.05


class SwapSlots:
    """A few Redis locks (expiring, owned by one worker name) that bound how many workers load a model at once."""

    def __init__(self, client: redis.Redis, keys: list[str], owner: str) -> None:
        self.client, self.keys, self.owner = client, keys, owner

    @classmethod
    def of(cls, client: redis.Redis, keys: Keys, count: int, owner: str) -> "SwapSlots":
        """The `count` swap slots of the key schema `keys` (BOOKREC_SWAP_SLOTS), as seen by worker `owner`."""
        return cls(client, [keys.swap_slot(i) for i in range(count)], owner)

    def take(self, wait_s: float) -> str | None:
        """The key of a slot now held by this worker, or None if none came free within `wait_s` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            for key in self.keys:
                if self.client.set(key, self.owner, nx=True, ex=SLOT_TTL_SECONDS):
                    return key
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(SLOT_RETRY_SECONDS, remaining))

    def give_back(self, key: str) -> bool:
        """Release a slot if this worker still holds it (it may have expired and gone to another worker); True if released."""
        try:
            return delete_if_held(self.client, key, self.owner)
        except redis.exceptions.RedisError as exc:
            logger.warning("could not release swap slot %s (it expires in %d s): %s", key, SLOT_TTL_SECONDS, exc)
            return False

    def release_all(self) -> int:
        """Give back every slot `owner` holds (its supervisor does this when the worker dies); return how many."""
        return sum(self.give_back(key) for key in self.keys)
