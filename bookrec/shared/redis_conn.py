"""Connecting to Redis from a URL: passwords, ACL users and TLS (`rediss://`), with clear failures."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Callable, Sequence

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel

from bookrec.shared.errors import ConfigError, RedisRefusingWrites, RedisUnavailable
from bookrec.shared.settings import Settings, redact_url

CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def connect(settings: Settings, socket_timeout: float | None = 5.0, retries: int = 2) -> redis.Redis:
    """A client for the queue Redis (not yet connected): `settings.redis_url`, or with BOOKREC_REDIS_SENTINELS the
    master the sentinels name, with the URL's database, credentials and TLS. TLS CA from BOOKREC_REDIS_CA_CERT.

    Calls retry a few times with backoff on a dropped connection, then raise redis's ConnectionError; `ping`
    turns that into RedisUnavailable. Through Sentinel every new connection asks the sentinels for the current
    master, so a client follows a failover once its old connections fail.
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
        if settings.redis_sentinels:
            return _through_sentinel(settings, options)
        return redis.Redis.from_url(settings.redis_url, **options)
    except ValueError as exc:
        raise ConfigError(f"BOOKREC_REDIS_URL={redact_url(settings.redis_url)!r} is not a Redis URL: {exc}") from None


def _through_sentinel(settings: Settings, options: dict[str, Any]) -> redis.Redis:
    """A client of the master BOOKREC_REDIS_SENTINEL_MASTER names, found through the sentinels (redis-py's
    Sentinel): the URL gives the database, user, password and TLS (`rediss://`); its host and port are unused."""
    url = parse_url(settings.redis_url)
    tls = url.pop("connection_class", None) is redis.SSLConnection
    master = {key: url[key] for key in ("db", "username", "password") if key in url}
    sentinel_options = {
        "socket_connect_timeout": options["socket_connect_timeout"],
        "socket_timeout": 3.0,
        "password": settings.redis_sentinel_password,
    }
    if tls:
        master["ssl"] = sentinel_options["ssl"] = True
        if settings.redis_ca_cert:
            sentinel_options["ssl_ca_certs"] = settings.redis_ca_cert
    sentinel = Sentinel(settings.redis_sentinels, sentinel_kwargs=sentinel_options, **options)
    return sentinel.master_for(settings.redis_sentinel_master, redis_class=redis.Redis, **master)


def unavailable(settings: Settings, exc: Exception) -> RedisUnavailable:
    """The RedisUnavailable for a connection failure: refused credentials or no answer, naming the redacted URL."""
    where = f"Redis at {settings.redis_endpoint}"
    if isinstance(exc, redis.exceptions.AuthenticationError):  # a ConnectionError too, so test it first
        return RedisUnavailable(
            f"{where} refused the credentials ({exc}); check the user and password in BOOKREC_REDIS_URL"
        )
    if settings.redis_sentinels:
        fix = "check the sentinels and BOOKREC_REDIS_SENTINEL_MASTER"
    else:
        fix = "start it or set BOOKREC_REDIS_URL"
    return RedisUnavailable(f"{where} did not answer ({exc}); {fix}")


def refuses_writes(exc: BaseException) -> bool:
    """Whether `exc` is Redis refusing a write: out of memory (noeviction), a read-only replica, or MISCONF."""
    if isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and _reason(exc).startswith("MISCONF")


def refusing(settings: Settings, exc: Exception) -> RedisRefusingWrites:
    """The RedisRefusingWrites for a refused write, naming the redacted URL, Redis's reason and the fix."""
    return RedisRefusingWrites(
        f"Redis at {settings.redis_endpoint} refuses writes ({_reason(exc)}); "
        f"{_fix_for(exc)}, then retry (workers resume on their own)"
    )


def _fix_for(exc: Exception) -> str:
    """What an operator does about a refused write."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "free memory in Redis or raise its maxmemory"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "point BOOKREC_REDIS_URL at the primary, not a replica"
    return "fix Redis's snapshot disk (see its log) or set stop-writes-on-bgsave-error no"


class Backoff:
    """Capped exponential pauses between tries of a Redis call that keeps failing, logged once per pause."""

    def __init__(self, logger: logging.Logger, first: float = 0.2, cap: float = 5.0) -> None:
        self.logger, self.first, self.cap = logger, first, cap
        self.delay = first

    def pause(self, what: str, exc: BaseException, stop: threading.Event | None = None) -> None:
        """Log why `what` failed and sleep the current delay (or until `stop` is set), then double it up to the cap."""
        self.logger.warning("%s: %s; retrying in %.1f s", what, _one_line(exc), self.delay)
        if stop is None:
            time.sleep(self.delay)
        else:
            stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        """Start again from the first delay (the call went through)."""
        self.delay = self.first


def _reason(exc: BaseException) -> str:
    """Redis's own words in an error, without redis-py's pipeline preamble (`Command # 1 (SET …) caused error:`)."""
    return str(exc).rsplit("caused error: ", 1)[-1].strip()


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and Redis's own words."""
    return f"{type(exc).__name__}: {_reason(exc)}"


def ping(client: redis.Redis, settings: Settings) -> None:
    """Raise RedisUnavailable (naming the redacted URL) unless Redis answers."""
    try:
        client.ping()
    except CONNECTION_ERRORS as exc:
        raise unavailable(settings, exc) from None
    except redis.exceptions.ResponseError as exc:
        raise RedisUnavailable(f"Redis at {settings.redis_endpoint} refused the connection ({exc})") from None


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


class PackedScript:
    """A Lua script called with EVALSHA, its arguments packed in Redis's wire format (RESP) by hand.

    redis-py's own packing and bookkeeping take several times longer for the workers' hot path (a batch of 500
    ~2.5 KB entries: ~1.3 ms of CPU packed here). If Redis does not have the script (restarted, SCRIPT FLUSH) it is
    loaded and the call repeated. Retried like any command of the client when the connection drops, so a script
    must be safe to run twice.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: Sequence[str | bytes], args: Sequence[str | int | bytes]) -> Any:
        """Run the script on `client` with `keys` and `args`; its reply (an error reply is raised)."""
        payload = _command("EVALSHA", self.sha, len(keys), *keys, *args)
        connection = client.connection_pool.get_connection()

        def call() -> Any:
            connection.send_packed_command([payload])
            try:
                return connection.read_response()
            except redis.exceptions.NoScriptError:
                connection.send_packed_command([_command("SCRIPT", "LOAD", self.source), payload])
                connection.read_response()
                return connection.read_response()

        return _on_connection(client, connection, call)


def raw_replies(client: redis.Redis, commands: Sequence[Sequence[str | int | bytes]]) -> list[Any]:
    """Send `commands` in one write and return their replies as the parser gives them (RESP3: HGETALL a dict of
    bytes), without redis-py's pipeline and its per-command bookkeeping, which cost more than the replies for a
    worker's 500 reads. Every reply is read before the first error reply is raised. Retried as PackedScript, so the
    commands must be safe to run twice."""
    payload = b"".join(_command(*command) for command in commands)
    connection = client.connection_pool.get_connection()

    def call() -> list[Any]:
        connection.send_packed_command([payload])
        replies, error = [], None
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.exceptions.ResponseError as exc:
                error = error or exc
        if error is not None:
            raise error
        return replies

    return _on_connection(client, connection, call)


def _on_connection(client: redis.Redis, connection: Any, call: Callable[[], Any]) -> Any:
    """`call()` on `connection` of `client`'s pool, retried as the client's commands are when the connection drops,
    the connection back in the pool afterwards."""
    try:
        return connection.retry.call_with_retry(call, lambda error: connection.disconnect())
    finally:
        client.connection_pool.release(connection)


def _command(*args: str | int | bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_arg(a) for a in args)


def _arg(value: str | int | bytes) -> bytes:
    """One argument of a command in RESP."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)
