"""Moving the production pointer: the store record, the Redis key workers watch, the event they hear,
and the refresh of every cached list. The one promote path: the client, the CLI, a retrain and
`bookrec init` all promote through `promote`.

The store record is written first, so it is the source of truth: if Redis is down or has lost
the pointer, workers fall back to `ModelStore.production()`, and `current_version` restores the
pointer from it.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.model_store.store import ModelStore, iso, utcnow
from bookrec.shared import jobs
from bookrec.shared.errors import RedisUnavailable
from bookrec.shared.keys import QUEUE_REFRESH, Keys
from bookrec.shared.settings import Settings

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def promote(
    store: ModelStore,
    redis: Redis,
    keys: Keys,
    version: str,
    reason: str = "manual",
    refresh: Settings | None = None,
    force: bool = False,
) -> dict:
    """Put `version` in production (store record, Redis pointer, `model_promoted` event) and, given the
    service's settings as `refresh`, schedule a refresh of every cached list; return the event with the
    refresh job's id as `refresh_job` (None without `refresh`: the benchmark and tests promote bare).

    Unless `force`, CatalogueMismatch when `version` was trained on another catalogue than production's.
    Raises RedisUnavailable after the store record is written if Redis does not answer. The pointer
    is set under the store's lock, so two promotions at once leave pointer and record on the same version.
    """
    event, tell_redis = _announcer(redis, keys, reason)
    store.set_production(version, announce=tell_redis, reason=reason, force=force)
    return _refreshed(event, redis, keys, refresh)


def rollback(store: ModelStore, redis: Redis, keys: Keys, refresh: Settings | None = None) -> dict:
    """Put back the version that was in production before the current one, as `promote`; return the event.

    The current version is popped off production's history, so each rollback goes one step further back.
    """
    event, tell_redis = _announcer(redis, keys, "rollback")
    store.roll_back(announce=tell_redis)
    return _refreshed(event, redis, keys, refresh)


def current_version(store: ModelStore, redis: Redis, keys: Keys) -> str | None:
    """The production version: the Redis pointer when it names a version the store holds or the one its record
    names, else the store's record, which the pointer is then set back to (a lost or garbage pointer is
    repaired, with a warning; with nothing recorded it is removed). None when nothing is in production.

    The recorded version is returned even if its directory is missing: loading it then fails naming the
    problem, which the worker retries and shows (`load_error`), instead of serving nothing silently.
    """
    raw = _call_redis(lambda: redis.get(keys.model_current), "the store record still names the production model")
    pointer = _decoded(raw)
    if store.holds(pointer):
        return pointer
    recorded = store.production()
    if pointer == recorded:
        return recorded
    if not _repair_pointer(redis, keys, raw, recorded):
        # Someone set the pointer between our GET and the repair: theirs is newer.
        now = _decoded(_call_redis(lambda: redis.get(keys.model_current), "the pointer was not read"))
        return now if store.holds(now) else recorded
    if pointer is None:
        log.warning("Redis had lost %s; restored it to %s from the store record", keys.model_current, recorded)
    else:
        log.warning(
            "%s named %r, which is no version in %s; %s",
            keys.model_current,
            pointer[:80],
            store.root,
            f"set it back to {recorded} from the store record" if recorded else "removed it (nothing is in production)",
        )
    return recorded


def _decoded(raw: bytes | None) -> str | None:
    """The pointer's value as text (bytes that are not UTF-8 are replaced: such a pointer names no version)."""
    return raw.decode(errors="replace") if raw is not None else None


def servable_production(store: ModelStore) -> str | None:
    """The store's recorded production version if its directory is there, else None."""
    recorded = store.production()
    return recorded if store.holds(recorded) else None


def _repair_pointer(redis: Redis, keys: Keys, seen: bytes | None, version: str | None) -> bool:
    """Set the pointer to `version` (None: delete it) if it still holds `seen` (None: absent); False if someone
    changed it meanwhile."""
    if seen is None:
        return bool(
            _call_redis(
                lambda: redis.set(keys.model_current, version, nx=True), "the pointer was not restored from the store"
            )
        )

    def compare_and_set() -> bool:
        with redis.pipeline() as pipe:
            try:
                pipe.watch(keys.model_current)
                if pipe.get(keys.model_current) != seen:
                    return False
                pipe.multi()
                if version is None:
                    pipe.delete(keys.model_current)
                else:
                    pipe.set(keys.model_current, version)
                pipe.execute()
                return True
            except WatchError:
                return False

    return _call_redis(compare_and_set, "the pointer was not repaired from the store")


def _announcer(redis: Redis, keys: Keys, reason: str) -> tuple[dict, Callable[[str, str | None], None]]:
    """An empty event and the store's `announce(version, previous)` callback that fills it and tells Redis."""
    event: dict = {}

    def tell_redis(version: str, previous: str | None) -> None:
        event.update(event="model_promoted", version=version, previous=previous, reason=reason, at=iso(utcnow()))
        _call_redis(
            lambda: _announce(redis, keys, event),
            f"the store record was updated ({version} is in production) "
            "and workers will pick the version up from it when Redis returns",
        )

    return event, tell_redis


def _refreshed(event: dict, redis: Redis, keys: Keys, refresh: Settings | None) -> dict:
    """Log the promotion in `event`, schedule the refresh of cached lists given `refresh`; the event with its job id."""
    version = event["version"]
    log.info("promoted model version %s (was %s, reason: %s)", version, event["previous"], event["reason"])
    refresh_job = None
    if refresh is not None:
        spec = jobs.refresh({}, refresh, description=f"refresh after {version}")
        queue = Queue(keys.queue(QUEUE_REFRESH), connection=redis, serializer=JSONSerializer)
        refresh_job = _call_redis(
            lambda: queue.enqueue_many([spec])[0].id,
            f"{version} is in production but the refresh of cached lists was not scheduled",
        )
    return {**event, "refresh_job": refresh_job}


def _announce(redis: Redis, keys: Keys, event: dict) -> None:
    """Point `model:current` at the event's version and publish the event."""
    redis.set(keys.model_current, event["version"])
    redis.publish(keys.events, json.dumps(event))


def _call_redis(call: Callable[[], _T], consequence: str) -> _T:
    """Run `call`, turning a Redis connection failure into RedisUnavailable that says `consequence`."""
    try:
        return call()
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise RedisUnavailable(f"Redis did not answer ({exc}); {consequence}") from exc
