"""The worker-state hash (`worker:{name}`): what each live serving worker publishes about itself.

Fields (all strings; see the README's Redis contract): `name`, `version` (the version loaded),
`pending_version` (production names a version this worker will swap to between jobs, else empty),
`load_error` (why the pending version, or any production at all, could not be loaded yet; empty otherwise:
the worker retries with backoff), `pid`, `host`, `queues` (comma-separated), `updated_at` (epoch seconds). The hash expires
`TTL` seconds after the worker's last write, so a dead worker drops out by itself.
"""

from __future__ import annotations

import os
import socket
import time

import redis

from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import text

TTL = 15
"""Seconds a worker's hash outlives its last write (it writes about once a second)."""


def publish(
    client: redis.Redis,
    keys: Keys,
    name: str,
    version: str | None,
    pending_version: str | None,
    queues: list[str],
    load_error: str | None = None,
) -> None:
    """Write this process's state for worker `name` and renew its expiry, in one round trip."""
    state = {
        "name": name,
        "version": version or "",
        "pending_version": pending_version or "",
        "load_error": load_error or "",
        "pid": str(os.getpid()),
        "host": socket.gethostname(),
        "queues": ",".join(queues),
        "updated_at": str(time.time()),
    }
    with client.pipeline(transaction=False) as pipe:
        pipe.hset(keys.worker(name), mapping=state)
        pipe.expire(keys.worker(name), TTL)
        pipe.execute()


def remove(client: redis.Redis, keys: Keys, name: str) -> None:
    """Delete worker `name`'s hash (it stopped cleanly)."""
    client.delete(keys.worker(name))


def read(client: redis.Redis, keys: Keys, name: str) -> dict[str, str]:
    """Worker `name`'s state ({} if it has none)."""
    return {text(k): text(v) for k, v in client.hgetall(keys.worker(name)).items()}


def read_all(client: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    """The state of every live serving worker; a SCAN, not for tight loops."""
    states = []
    for key in client.scan_iter(match=keys.worker_pattern, count=1000):
        state = {text(k): text(v) for k, v in client.hgetall(key).items()}
        if state.get("name"):
            states.append(state)
    return states


def versions(client: redis.Redis, keys: Keys, names: list[str]) -> list[str | None]:
    """The version each named worker serves (None if it has no state), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.worker(name), "version")
        return [text(value) or None for value in pipe.execute()]
