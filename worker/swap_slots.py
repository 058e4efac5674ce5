"""Swap slots: a few expiring Redis locks that bound how many workers load a newly promoted model at once.

While a worker loads, it holds a slot (`lock:swap:N`, its value the worker's name); the others keep
serving. A slot outlives a dead holder by at most SLOT_TTL_SECONDS, and its supervisor gives it
back at once. No TensorFlow here: the supervisor imports this module.
"""

from __future__ import annotations

import logging
import time

import redis

from shared.keys import Keys

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

    def give_back(self, key: str) -> None:
        """Release a slot if this worker still holds it (it may have expired and gone to another worker)."""
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                if _text(pipe.get(key)) == self.owner:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
        except redis.exceptions.WatchError:
            pass  # the slot changed hands meanwhile: it is no longer ours to release
        except redis.exceptions.RedisError as exc:
            logger.warning("could not release swap slot %s (it expires in %d s): %s", key, SLOT_TTL_SECONDS, exc)

    def release_all(self) -> int:
        """Give back every slot `owner` holds (its supervisor does this when the worker dies); return how many."""
        held = [key for key in self.keys if _text(self.client.get(key)) == self.owner]
        for key in held:
            self.give_back(key)
        return len(held)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
