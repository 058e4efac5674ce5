"""Connecting to Redis from a URL: passwords, ACL users and TLS (`rediss://`), with clear failures."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.errors import ConfigError, RedisUnavailable
from shared.settings import Settings, redact_url

CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def connect(settings: Settings, socket_timeout: float | None = 5.0, retries: int = 2) -> redis.Redis:
    """A client for `settings.redis_url` (not yet connected); TLS CA from BOOKREC_REDIS_CA_CERT when set.

    Calls retry a few times with backoff on a dropped connection, then raise redis's
    ConnectionError; `ping` turns that into RedisUnavailable.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 3.0,
        "socket_timeout": socket_timeout,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }
    if settings.redis_ca_cert:
        options["ssl_ca_certs"] = settings.redis_ca_cert
    try:
        return redis.Redis.from_url(settings.redis_url, **options)
    except ValueError as exc:
        raise ConfigError(f"BOOKREC_REDIS_URL={redact_url(settings.redis_url)!r} is not a Redis URL: {exc}") from None


def unavailable(settings: Settings, exc: Exception) -> RedisUnavailable:
    """The RedisUnavailable for a connection failure: refused credentials or no answer, naming the redacted URL."""
    where = f"Redis at {redact_url(settings.redis_url)}"
    if isinstance(exc, redis.exceptions.AuthenticationError):  # a ConnectionError too, so test it first
        return RedisUnavailable(f"{where} refused the credentials ({exc}); check the user and password in BOOKREC_REDIS_URL")
    return RedisUnavailable(f"{where} did not answer ({exc}); start it or set BOOKREC_REDIS_URL")


def ping(client: redis.Redis, settings: Settings) -> None:
    """Raise RedisUnavailable (naming the redacted URL) unless Redis answers."""
    try:
        client.ping()
    except CONNECTION_ERRORS as exc:
        raise unavailable(settings, exc) from None
    except redis.exceptions.ResponseError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(settings.redis_url)} refused the connection ({exc})") from None


def text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (bookrec's clients do not decode replies)."""
    return value.decode() if isinstance(value, bytes) else value


def delete_if_held(client: redis.Redis, key: str, owner: str) -> bool:
    """Delete the lock `key` if its value is still `owner`, atomically (WATCH); True if it was deleted.

    False if another owner holds it or it changed hands meanwhile; other Redis errors propagate.
    """
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            if text(pipe.get(key)) != owner:
                return False
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
            return True
        except redis.exceptions.WatchError:
            return False
