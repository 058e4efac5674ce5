"""Connecting to Redis from a URL: passwords, ACL users and TLS (`rediss://`), with clear failures."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from bookrec.shared.errors import ConfigError, RedisRefusingWrites, RedisUnavailable
from bookrec.shared.settings import Settings, redact_url

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
        return RedisUnavailable(
            f"{where} refused the credentials ({exc}); check the user and password in BOOKREC_REDIS_URL"
        )
    return RedisUnavailable(f"{where} did not answer ({exc}); start it or set BOOKREC_REDIS_URL")


def refuses_writes(exc: BaseException) -> bool:
    """Whether `exc` is Redis refusing a write: out of memory (noeviction), a read-only replica, or MISCONF."""
    if isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and _reason(exc).startswith("MISCONF")


def refusing(settings: Settings, exc: Exception) -> RedisRefusingWrites:
    """The RedisRefusingWrites for a refused write, naming the redacted URL, Redis's reason and the fix."""
    return RedisRefusingWrites(
        f"Redis at {redact_url(settings.redis_url)} refuses writes ({_reason(exc)}); "
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


class PackedCommands:
    """Redis commands packed in Redis's wire format (RESP), sent in one write by `send`.

    A pipeline without redis-py's per-command packing and bookkeeping: for 500 SETs of ~2.5 KB
    entries it takes ~1.3 ms of CPU instead of ~6.5 ms (the workers' hot path).
    """

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def set_many(self, pairs: Iterable[tuple[str, str]], ttl: int | None) -> PackedCommands:
        """Add `SET key value EX ttl` for each (key, value); one `MSET` of them all (no expiry) when `ttl` is None."""
        if ttl is None:
            packed = [b"$%d\r\n%s\r\n" % (len(b), b) for key, value in pairs for b in (key.encode(), value.encode())]
            if packed:
                self.commands.append(b"*%d\r\n$4\r\nMSET\r\n%s" % (len(packed) + 1, b"".join(packed)))
            return self
        packed_ttl = _arg(ttl)
        for key, value in pairs:
            k, v = key.encode(), value.encode()
            self.commands.append(
                b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n%s" % (len(k), k, len(v), v, packed_ttl)
            )
        return self

    def add(self, *args: str | int) -> PackedCommands:
        """Add one command."""
        self.commands.append(_command(*args))
        return self

    def send(self, client: redis.Redis) -> None:
        """Send every command in one write and read all their replies; raise the first error reply.

        Retried like any command of `client` when the connection drops (the commands must be safe to
        repeat, as a redis-py pipeline's would be).
        """
        if not self.commands:
            return
        payload = b"".join(self.commands)
        count = len(self.commands)
        connection = client.connection_pool.get_connection()

        def send() -> list[redis.ResponseError]:
            connection.send_packed_command([payload])
            errors = []
            for _ in range(count):
                try:
                    connection.read_response()
                except redis.ResponseError as exc:
                    errors.append(exc)
            return errors

        try:
            errors = connection.retry.call_with_retry(send, lambda error: connection.disconnect())
        finally:
            client.connection_pool.release(connection)
        if errors:
            raise errors[0]

    def send_unless_above(self, client: redis.Redis, key: str, value: int) -> int | None:
        """Run the commands as one transaction only while the integer at `key` is at most `value`, raising it to `value`.

        Returns None once they ran, or the larger integer found at `key` (then nothing ran). WATCH makes the
        check and the write atomic without a Lua script; a transaction aborted because `key` changed meanwhile
        is tried again. Retried like `send` when the connection drops.
        """
        connection = client.connection_pool.get_connection()
        try:
            while True:
                found = connection.retry.call_with_retry(
                    lambda: self._transaction(connection, key, value), lambda error: connection.disconnect()
                )
                if found != _ABORTED:
                    return found
        except BaseException:
            connection.disconnect()  # replies may be left unread, or a WATCH still set
            raise
        finally:
            client.connection_pool.release(connection)

    def _transaction(self, connection: Any, key: str, value: int) -> int | None:
        """One WATCH, check, MULTI ... EXEC round; None if it ran, the larger value found, or _ABORTED."""
        connection.send_packed_command([_command("WATCH", key) + _command("GET", key)])
        connection.read_response()
        found = int(connection.read_response() or 0)
        if found > value:
            connection.send_packed_command([_command("UNWATCH")])
            connection.read_response()
            return found
        body = self.commands + ([_command("SET", key, value)] if value > found else [])
        connection.send_packed_command([_command("MULTI") + b"".join(body) + _command("EXEC")])
        connection.read_response()
        for _ in body:
            connection.read_response()  # QUEUED
        replies = connection.read_response()
        if replies is None:
            return _ABORTED
        errors = [reply for reply in replies if isinstance(reply, redis.ResponseError)]
        if errors:
            raise errors[0]
        return None


_ABORTED = -1  # a transaction EXEC refused because the watched key changed


def _command(*args: str | int) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_arg(a) for a in args)


def _arg(value: str | int) -> bytes:
    """One argument of a command in RESP."""
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)
