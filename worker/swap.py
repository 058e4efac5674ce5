"""Hot swap: follow the production pointer and swap the served model between jobs.

`ModelHolder.current` is the runtime a job should use; a job reads it once at its start, so it
runs start to end on one version. A watcher thread listens on the events channel and also
polls `model:current` every second (a missed message is caught by the poll). On a new version
it loads it beside the old one, warms it up, then replaces the reference; the old runtime is
freed when the last job holding it ends. If Redis has lost the pointer, it is restored from
the store's production record. A version that fails to load is logged and skipped; the old
one keeps serving.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from typing import Callable

import redis

from model_store.promotion import current_version
from model_store.store import ModelStore
from shared.errors import BookrecError
from shared.keys import Keys
from worker.runtime import ModelRuntime

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HEARTBEAT_TTL = 15

Loader = Callable[[ModelStore, str], ModelRuntime]


class ModelHolder:
    """The runtime in use, and the watcher that replaces it when production changes."""

    def __init__(self, store: ModelStore, client: redis.Redis, keys: Keys, name: str, queues: list[str], loader: Loader = ModelRuntime.load) -> None:
        self.store, self.client, self.keys, self.name, self.queues = store, client, keys, name, queues
        self.loader = loader
        self.current: ModelRuntime | None = None
        self.failed_versions: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._swap_lock = threading.Lock()

    def load_initial(self) -> None:
        """Load the production version (waiting for one to exist); raise BookrecError if it cannot be loaded."""
        while not self._stop.is_set():
            version = current_version(self.store, self.client, self.keys)
            if version is not None:
                self.current = self.loader(self.store, version)
                self.publish_state()
                return
            logger.warning("no model in production yet; waiting for `bookrec train --promote` or a retrain")
            self._stop.wait(2.0)

    def start(self) -> None:
        """Start the watcher thread (daemon)."""
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher and remove this worker's state key."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.delete(self.keys.worker(self.name))
        except redis.exceptions.RedisError:
            pass

    def check(self) -> bool:
        """Swap to the production version if it differs from the one served; True if a swap happened."""
        with self._swap_lock:
            return self._check()

    def _check(self) -> bool:
        version = current_version(self.store, self.client, self.keys)
        if version is None or (self.current is not None and version == self.current.version) or version in self.failed_versions:
            return False
        try:
            runtime = self.loader(self.store, version)
        except BookrecError as exc:
            self.failed_versions.add(version)
            logger.error("cannot load model %s, keeping %s: %s", version, self.version, exc)
            return False
        old, self.current = self.current, runtime
        logger.info("swapped model %s -> %s", old.version if old else None, version)
        del old
        gc.collect()
        self.publish_state()
        return True

    @property
    def version(self) -> str | None:
        """The version currently served (None before the first load)."""
        return self.current.version if self.current else None

    def publish_state(self) -> None:
        """Record this worker's loaded version in Redis (expires if the worker dies)."""
        state = {"name": self.name, "version": self.version or "", "pid": str(os.getpid()), "host": socket.gethostname(), "queues": ",".join(self.queues), "updated_at": str(time.time())}
        key = self.keys.worker(self.name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=state)
            pipe.expire(key, HEARTBEAT_TTL)
            pipe.execute()

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.keys.events)
                    backoff = 0.5
                    self._listen(pubsub)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, BookrecError) as exc:
                logger.warning("model watcher lost Redis (%s); retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=POLL_SECONDS)
            if message is not None:
                _log_event(message)
            self.check()
            self.publish_state()


def _log_event(message: dict) -> None:
    try:
        event = json.loads(message["data"])
        logger.info("event: %s", event.get("event"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("ignored a malformed event on the events channel")
