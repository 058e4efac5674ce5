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
record. A version that fails to load is logged and the old one keeps serving; it is tried again with
backoff (1 s, doubling up to 30 s) for as long as it is production, and the worker's state shows it
pending with the error (`load_error`). A worker with no model yet waits, saying why, instead of exiting.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import redis

from bookrec.model_store.promotion import current_version
from bookrec.model_store.store import ModelStore
from bookrec.shared import worker_state
from bookrec.shared.errors import BookrecError, VersionNotServed
from bookrec.shared.keys import Keys
from bookrec.worker.serve import metrics
from bookrec.worker.serve.runtime import ModelRuntime
from bookrec.worker.serve.swap_slots import SwapSlots

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
WATCH_BACKOFF_FIRST = 0.5  # the watcher's first pause after a Redis failure; doubled up to 10 s while it lasts
SLOT_WAIT_SECONDS = 30  # a job that needs the new version waits this long for a slot, then loads without one
LOAD_RETRY_FIRST = 1.0  # a version that failed to load is tried again after this many seconds, doubling each time
LOAD_RETRY_MAX = 30.0  # up to this, for as long as it is the production version
NO_PRODUCTION = "no model in production yet; waiting for `bookrec train --promote` or a retrain"
INITIAL_POLL_SECONDS = 0.5  # how often a worker with no model yet looks for a production version it can load

Loader = Callable[[ModelStore, str], ModelRuntime]


@dataclass
class _FailedLoad:
    """The last failed load of one version: why, and when to try it again."""

    version: str
    error: str
    delay: float
    retry_at: float


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.client, self.keys, self.name, self.queues = store, client, keys, name, queues
        self.loader, self.clock = loader, clock
        self.slots = SwapSlots.of(client, keys, slots, name)
        self.current: ModelRuntime | None = None
        self.failed: _FailedLoad | None = None  # the production version that failed to load, retried with backoff
        self.load_error: str | None = None  # shown in `bookrec status`: why production is not served here yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._swap_lock = threading.Lock()
        self._backoff = WATCH_BACKOFF_FIRST  # seconds the watcher waits after its next Redis failure
        self.pending_version: str | None = None  # set by the watcher: production names a version not served here yet

    def load_initial(self, stopped: Callable[[], bool] = lambda: False) -> None:
        """Load the production version, waiting (and saying why in the worker's state) while there is none that
        loads: nothing promoted, production's directory missing, a version that fails to load (retried with
        backoff while it is production), Redis away. Returns once loaded, or when `stopped()` or `stop()`."""
        waiting_for = None
        while not (stopped() or self._stop.is_set()):
            try:
                version = current_version(self.store, self.client, self.keys)
                problem = None if version is not None else NO_PRODUCTION
            except BookrecError as exc:
                version, problem = None, str(exc)
            if version is not None and self._due(version) and self._load(version):
                return
            if problem is not None:
                self.pending_version, self.load_error = None, problem
                if problem != waiting_for:
                    logger.warning("not serving yet: %s", problem)
                waiting_for = problem
            self._publish_quietly()
            self._stop.wait(INITIAL_POLL_SECONDS)

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
        """Mark a swap as pending if production names a version this worker does not serve (it is due at once,
        or, after a failed load of that version, once its backoff has passed)."""
        self._pending(current_version(self.store, self.client, self.keys))

    def swap_if_due(self) -> bool:
        """Between jobs: swap if a swap is due and a swap slot is free (else keep serving; retried after the next job)."""
        if self.pending_version is None or not self._due(self.pending_version):
            return False
        try:
            return self.check(wait=False)
        except (redis.exceptions.RedisError, BookrecError) as exc:
            logger.warning("model swap postponed: %s", exc)
            return False

    def check(self, wait: bool = True) -> bool:
        """Swap to the production version if it differs from the one served and is due; True if a swap happened.

        The load happens while holding a swap slot; with `wait` it waits up to SLOT_WAIT_SECONDS for
        one (then loads anyway), without it it returns False at once when every slot is taken.
        """
        with self._swap_lock:
            version = current_version(self.store, self.client, self.keys)
            self._pending(version)
            if version is None or version == self.version or not self._due(version):
                return False
            slot = self.slots.take(SLOT_WAIT_SECONDS if wait else 0.0)
            if slot is None and not wait:
                return False
            if slot is None:
                logger.warning("no swap slot free after %d s; loading %s anyway", SLOT_WAIT_SECONDS, version)
            try:
                return self._load(version)
            finally:
                if slot is not None:
                    self.slots.give_back(slot)

    def runtime_for(self, version: str | None = None) -> ModelRuntime:
        """The runtime a job that must run on `version` (default: the production version) uses, swapping first
        if needed; VersionNotServed, with the reason, if this worker cannot serve that version now."""
        if version is None or version != self.version:
            self.check()
        wanted = self.pending_version if version is None else version
        if self.current is None or (wanted is not None and wanted != self.version):
            why = f": {self.load_error}" if self.load_error else ""
            raise VersionNotServed(f"worker {self.name} serves {self.version}, not {wanted}{why}")
        return self.current

    def _pending(self, version: str | None) -> None:
        """Record what production names: pending if this worker does not serve it, with its load error if any."""
        if version is None or version == self.version:
            self.pending_version, self.failed, self.load_error = None, None, None
            return
        self.pending_version = version
        self.load_error = self.failed.error if self.failed and self.failed.version == version else None

    def _due(self, version: str) -> bool:
        """Whether loading `version` may be tried now (not while the backoff after its last failure runs)."""
        return self.failed is None or self.failed.version != version or self.clock() >= self.failed.retry_at

    def _load(self, version: str) -> bool:
        started = time.perf_counter()
        try:
            runtime = self.loader(self.store, version)
        except BookrecError as exc:
            self._failed(version, str(exc))
            return False
        old, self.current = self.current, runtime
        self.pending_version, self.failed, self.load_error = None, None, None
        metrics.serving(version, old.version if old else None)
        if old is not None:
            metrics.swapped(time.perf_counter() - started)
            logger.info("swapped model %s -> %s", old.version, version)
        del old
        gc.collect()
        self._publish_quietly()
        return True

    def _failed(self, version: str, error: str) -> None:
        """Note a failed load of `version`: it stays pending, with its error, and is tried again after a backoff."""
        previous = self.failed
        delay = (
            min(previous.delay * 2, LOAD_RETRY_MAX) if previous and previous.version == version else LOAD_RETRY_FIRST
        )
        self.failed = _FailedLoad(version, error, delay, self.clock() + delay)
        self.pending_version, self.load_error = version, error
        metrics.swap_failed()
        logger.error(
            "cannot load model %s, keeping %s: %s; trying again in %.0f s", version, self.version, error, delay
        )
        self._publish_quietly()

    @property
    def version(self) -> str | None:
        """The version currently served (None before the first load)."""
        return self.current.version if self.current else None

    def publish_state(self) -> None:
        """Record this worker's loaded and pending versions and its load error in Redis (expires if the worker dies),
        and whether a swap is pending in its metrics."""
        metrics.swap_pending(self.pending_version is not None)
        worker_state.publish(
            self.client, self.keys, self.name, self.version, self.pending_version, self.queues, self.load_error
        )

    def _publish_quietly(self) -> None:
        """publish_state, unless Redis is away (the watcher publishes again every second)."""
        try:
            self.publish_state()
        except redis.exceptions.RedisError as exc:
            logger.debug("worker state not published: %s", exc)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    pubsub.subscribe(self.keys.events)
                    self._listen(pubsub)
            except (redis.exceptions.RedisError, BookrecError) as exc:  # gone, refusing writes, or another error
                lost = isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, BookrecError))
                what = "lost Redis" if lost else f"got {type(exc).__name__} from Redis"
                logger.warning("model watcher %s (%s); retrying in %.1f s", what, exc, self._backoff)
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, 10.0)

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=POLL_SECONDS)
            if message is not None:
                _log_event(message)
            self.notice()
            self.publish_state()
            self._backoff = WATCH_BACKOFF_FIRST  # Redis answered and accepted the write: the next failure starts over


def _log_event(message: dict) -> None:
    try:
        event = json.loads(message["data"])
        logger.info("event: %s", event.get("event"))
    except (ValueError, TypeError, AttributeError):
        logger.warning("ignored a malformed event on the events channel")
