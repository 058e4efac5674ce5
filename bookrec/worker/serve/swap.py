"""Hot swap: follow the production pointer and swap the served model between jobs.

`ModelHolder.current` is the runtime a job should use; a job reads it once at its start, so it
runs start to end on one version. A watcher thread listens on the events channel and also
polls `model:current` every second (a missed message is caught by the poll); when production
names a version this worker does not serve, it marks a swap as due. The worker's own loop
takes it between jobs (`swap_if_due`), while it holds no job and is not waiting for one, so no
request waits behind a load. Loads are staggered across workers: a worker loads only while it
holds one of BOOKREC_SWAP_SLOTS Redis locks (`lock:swap:N`); the others keep serving the old
version meanwhile and swap after their next job. A load builds the new runtime beside the old
one and warms it up before replacing the reference; the old one is freed when the last job
holding it ends. If Redis has lost the pointer, it is restored from the store's production
record. A version that fails to load is logged and skipped; the old one keeps serving.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from typing import Callable

import redis

from bookrec.model_store.promotion import current_version
from bookrec.model_store.store import ModelStore
from bookrec.shared import worker_state
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import Keys
from bookrec.worker.serve.runtime import ModelRuntime
from bookrec.worker.serve.swap_slots import SwapSlots

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
SLOT_WAIT_SECONDS = 30  # a job that needs the new version waits this long for a slot, then loads without one

Loader = Callable[[ModelStore, str], ModelRuntime]


class ModelHolder:
    """The runtime in use, and the watcher that replaces it when production changes."""

    def __init__(
        self,
        store: ModelStore,
        client: redis.Redis,
        keys: Keys,
        name: str,
        queues: list[str],
        loader: Loader = ModelRuntime.load,
        slots: int = 1,
    ) -> None:
        self.store, self.client, self.keys, self.name, self.queues = store, client, keys, name, queues
        self.loader = loader
        self.slots = SwapSlots.of(client, keys, slots, name)
        self.current: ModelRuntime | None = None
        self.failed_versions: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._swap_lock = threading.Lock()
        self.pending_version: str | None = None  # set by the watcher: production names a version not served here yet

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
            worker_state.remove(self.client, self.keys, self.name)
        except redis.exceptions.RedisError:
            pass

    def notice(self) -> None:
        """Mark a swap as due (`pending_version`) if production names a version this worker does not serve."""
        version = current_version(self.store, self.client, self.keys)
        self.pending_version = version if self._wanted(version) else None

    def swap_if_due(self) -> bool:
        """Between jobs: swap if a swap is due and a swap slot is free (else keep serving; retried after the next job)."""
        if self.pending_version is None:
            return False
        try:
            return self.check(wait=False)
        except (redis.exceptions.RedisError, BookrecError) as exc:
            logger.warning("model swap postponed: %s", exc)
            return False

    def check(self, wait: bool = True) -> bool:
        """Swap to the production version if it differs from the one served; True if a swap happened.

        The load happens while holding a swap slot; with `wait` it waits up to SLOT_WAIT_SECONDS for
        one (then loads anyway), without it it returns False at once when every slot is taken.
        """
        with self._swap_lock:
            version = current_version(self.store, self.client, self.keys)
            if not self._wanted(version):
                self.pending_version = None
                return False
            slot = self.slots.take(SLOT_WAIT_SECONDS if wait else 0.0)
            if slot is None and not wait:
                return False
            if slot is None:
                logger.warning("no swap slot free after %d s; loading %s anyway", SLOT_WAIT_SECONDS, version)
            try:
                self.pending_version = None
                return self._load(version)
            finally:
                if slot is not None:
                    self.slots.give_back(slot)

    def _wanted(self, version: str | None) -> bool:
        return version is not None and version != self.version and version not in self.failed_versions

    def _load(self, version: str) -> bool:
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
        """Record this worker's loaded and pending versions in Redis (expires if the worker dies)."""
        worker_state.publish(self.client, self.keys, self.name, self.version, self.pending_version, self.queues)

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
            self.notice()
            self.publish_state()


def _log_event(message: dict) -> None:
    try:
        event = json.loads(message["data"])
        logger.info("event: %s", event.get("event"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("ignored a malformed event on the events channel")
