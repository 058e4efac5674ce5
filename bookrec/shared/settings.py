"""All configuration, read from environment variables in one place.

Every variable is documented in the README's Configuration section. `Settings.from_env()`
reads them once; parts receive a `Settings` instead of reading `os.environ` themselves.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from bookrec.shared.errors import ConfigError
from bookrec.shared.payloads import MAX_N
from bookrec.shared.ratings import DEFAULT_RATING_SCALE

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///var/bookrec.db"
DEFAULT_METRICS_PORT = 9810
"""`bookrec worker`'s metrics port (BOOKREC_METRICS_PORT); `bookrec ingest` and `bookrec scheduler` use the next two.
Not Prometheus's 9100 family: 9100 is node_exporter's, which often runs on the same host."""
DEFAULT_INGEST_METRICS_PORT = DEFAULT_METRICS_PORT + 1
DEFAULT_SCHEDULER_METRICS_PORT = DEFAULT_METRICS_PORT + 2


def _int(
    env: Mapping[str, str], name: str, default: int | None, minimum: int = 0, maximum: int | None = None
) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    """A TCP port to serve metrics on, 0 to serve none; unset or empty means `default`."""
    return _int(env, name, default, minimum=0, maximum=65_535)


def _rating_scale(env: Mapping[str, str]) -> dict[str, float]:
    """BOOKREC_RATING_MIN and BOOKREC_RATING_MAX, checked: finite numbers, the minimum below the maximum."""
    low = _float(env, "BOOKREC_RATING_MIN", DEFAULT_RATING_SCALE[0])
    high = _float(env, "BOOKREC_RATING_MAX", DEFAULT_RATING_SCALE[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"BOOKREC_RATING_MIN={low:g} must be a finite number below BOOKREC_RATING_MAX={high:g}")
    return {"rating_min": low, "rating_max": high}


def _cron(env: Mapping[str, str]) -> str | None:
    """BOOKREC_RETRAIN_CRON, checked with croniter (what rq.cron reads it with); None when unset or blank."""
    raw = (env.get("BOOKREC_RETRAIN_CRON") or "").strip()
    if not raw:
        return None
    from croniter import croniter

    try:
        croniter(raw)
    except ValueError as exc:  # croniter's errors are ValueErrors
        raise ConfigError(
            f"BOOKREC_RETRAIN_CRON={raw!r} is not a cron expression ({exc}); use five fields, "
            "minute hour day-of-month month day-of-week, e.g. '0 3 * * *' (03:00 every day)"
        ) from None
    return raw


DASHBOARD_TOKEN_MIN_LENGTH = 16
"""The shortest BOOKREC_DASHBOARD_TOKEN accepted: the token is all that stands between a browser and a promotion."""


def _dashboard_token(env: Mapping[str, str]) -> str | None:
    """BOOKREC_DASHBOARD_TOKEN (None when unset or empty: the dashboard is read-only), checked for length and
    surrounding whitespace; the message never quotes it."""
    token = env.get("BOOKREC_DASHBOARD_TOKEN") or ""
    if not token:
        return None
    if token != token.strip():
        raise ConfigError("BOOKREC_DASHBOARD_TOKEN starts or ends with whitespace; set it without")
    if len(token) < DASHBOARD_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"BOOKREC_DASHBOARD_TOKEN is {len(token)} characters; use at least {DASHBOARD_TOKEN_MIN_LENGTH}, "
            "e.g. `openssl rand -hex 32`"
        )
    return token


def _sentinels(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """BOOKREC_REDIS_SENTINELS (`host:port,host:port,…`) as (host, port) pairs; () when unset. ConfigError naming
    the bad address, or BOOKREC_REDIS_SENTINEL_MASTER missing."""
    raw = (env.get("BOOKREC_REDIS_SENTINELS") or "").strip()
    if not raw:
        return ()
    if not (env.get("BOOKREC_REDIS_SENTINEL_MASTER") or "").strip():
        raise ConfigError(
            "BOOKREC_REDIS_SENTINELS is set but BOOKREC_REDIS_SENTINEL_MASTER is not: name the master the sentinels "
            "monitor (the name in their `sentinel monitor NAME host port quorum` line)"
        )
    found = []
    for address in (a.strip() for a in raw.split(",")):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"BOOKREC_REDIS_SENTINELS holds {address!r}, not a host:port (e.g. 10.0.0.5:26379); "
                "separate sentinels with commas"
            )
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def _key_prefix(prefix: str) -> str:
    """BOOKREC_KEY_PREFIX, checked: it also names the queues (RQ joins a worker's queue names with commas)
    and starts the SCAN patterns, so whitespace, commas and glob characters are refused."""
    if not prefix:
        raise ConfigError("BOOKREC_KEY_PREFIX must not be empty")
    bad = sorted({c for c in prefix if c.isspace() or c in ",*?[]\\"})
    if bad:
        raise ConfigError(
            f"BOOKREC_KEY_PREFIX={prefix!r} holds {' '.join(repr(c) for c in bad)}; "
            "use letters, digits and punctuation such as ':', '-', '_', '.'"
        )
    return prefix


@dataclass(frozen=True)
class Settings:
    """bookrec's configuration. Field names match the env vars without the `BOOKREC_` prefix."""

    redis_url: str = DEFAULT_REDIS_URL
    model_store: Path = Path("./var/models")
    data_dir: Path = Path("./var/data")
    key_prefix: str = "bookrec:"
    cache_ttl: int = 0
    cache_n: int = 10
    tf_threads: int | None = None
    keep_versions: int = 5
    keep_production: int = 3
    gate_tolerance: float = 0.0
    train_memory_mb: int = 4096
    ease_dense_max: int = 20000
    retrain_lock_ttl: int = 600
    refresh_chunk: int = 500
    job_timeout: int = 600
    swap_slots: int = 1
    redis_ca_cert: str | None = None
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 1000
    log_level: str = "INFO"
    database_url: str = DEFAULT_DATABASE_URL
    rating_min: float = DEFAULT_RATING_SCALE[0]
    rating_max: float = DEFAULT_RATING_SCALE[1]
    ingest_claim_s: int = 30
    ingest_batch: int = 1000
    ingest_block_ms: int = 1000
    retrain_cron: str | None = None
    retrain_after_ratings: int = 0
    retrain_check_s: int = 60
    dashboard_token: str | None = field(default=None, repr=False)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    ingest_metrics_port: int = DEFAULT_INGEST_METRICS_PORT
    scheduler_metrics_port: int = DEFAULT_SCHEDULER_METRICS_PORT
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `env` (default: `os.environ`), raising ConfigError on a malformed value."""
        env = os.environ if env is None else env
        prefix = _key_prefix(env.get("BOOKREC_KEY_PREFIX", "bookrec:"))
        return cls(
            redis_url=env.get("BOOKREC_REDIS_URL") or DEFAULT_REDIS_URL,
            model_store=Path(env.get("BOOKREC_MODEL_STORE") or "./var/models"),
            data_dir=Path(env.get("BOOKREC_DATA_DIR") or "./var/data"),
            key_prefix=prefix,
            cache_ttl=_int(env, "BOOKREC_CACHE_TTL", 0, minimum=0),
            cache_n=_int(env, "BOOKREC_CACHE_N", 10, minimum=1, maximum=MAX_N),
            tf_threads=_int(env, "BOOKREC_TF_THREADS", None, minimum=0),
            keep_versions=_int(env, "BOOKREC_KEEP_VERSIONS", 5, minimum=1),
            keep_production=_int(env, "BOOKREC_KEEP_PRODUCTION", 3, minimum=1),
            gate_tolerance=_float(env, "BOOKREC_GATE_TOLERANCE", 0.0),
            train_memory_mb=_int(env, "BOOKREC_TRAIN_MEMORY_MB", 4096, minimum=1),
            ease_dense_max=_int(env, "BOOKREC_EASE_DENSE_MAX", 20000, minimum=1),
            retrain_lock_ttl=_int(env, "BOOKREC_RETRAIN_LOCK_TTL", 600, minimum=10),
            refresh_chunk=_int(env, "BOOKREC_REFRESH_CHUNK", 500, minimum=1),
            job_timeout=_int(env, "BOOKREC_JOB_TIMEOUT", 600, minimum=1),
            swap_slots=_int(env, "BOOKREC_SWAP_SLOTS", 1, minimum=1),
            redis_ca_cert=env.get("BOOKREC_REDIS_CA_CERT") or None,
            redis_sentinels=_sentinels(env),
            redis_sentinel_master=(env.get("BOOKREC_REDIS_SENTINEL_MASTER") or "").strip() or None,
            redis_sentinel_password=env.get("BOOKREC_REDIS_SENTINEL_PASSWORD") or None,
            redis_wait_replicas=_int(env, "BOOKREC_REDIS_WAIT_REPLICAS", 0, minimum=0),
            redis_wait_ms=_int(env, "BOOKREC_REDIS_WAIT_MS", 1000, minimum=1, maximum=60_000),
            log_level=(env.get("BOOKREC_LOG_LEVEL") or "INFO").upper(),
            database_url=env.get("BOOKREC_DATABASE_URL") or DEFAULT_DATABASE_URL,
            ingest_claim_s=_int(env, "BOOKREC_INGEST_CLAIM_S", 30, minimum=1),
            ingest_batch=_int(env, "BOOKREC_INGEST_BATCH", 1000, minimum=1, maximum=10_000),
            ingest_block_ms=_int(env, "BOOKREC_INGEST_BLOCK_MS", 1000, minimum=10, maximum=60_000),
            retrain_cron=_cron(env),
            retrain_after_ratings=_int(env, "BOOKREC_RETRAIN_AFTER_RATINGS", 0, minimum=0),
            retrain_check_s=_int(env, "BOOKREC_RETRAIN_CHECK_S", 60, minimum=1, maximum=86_400),
            dashboard_token=_dashboard_token(env),
            metrics_host=(env.get("BOOKREC_METRICS_HOST") or "127.0.0.1").strip(),
            metrics_port=_port(env, "BOOKREC_METRICS_PORT", DEFAULT_METRICS_PORT),
            ingest_metrics_port=_port(env, "BOOKREC_INGEST_METRICS_PORT", DEFAULT_INGEST_METRICS_PORT),
            scheduler_metrics_port=_port(env, "BOOKREC_SCHEDULER_METRICS_PORT", DEFAULT_SCHEDULER_METRICS_PORT),
            **_rating_scale(env),
        )

    def with_overrides(self, **changes: object) -> "Settings":
        """Return a copy with some fields replaced (used by tests and the demo)."""
        return replace(self, **changes)

    @property
    def cache_expiry(self) -> int | None:
        """Seconds a cached list lives (BOOKREC_CACHE_TTL), None when it never expires (0, the default)."""
        return self.cache_ttl or None

    @property
    def rating_scale(self) -> tuple[float, float]:
        """(lowest, highest) rating a rating event may carry (BOOKREC_RATING_MIN, BOOKREC_RATING_MAX)."""
        return (self.rating_min, self.rating_max)

    @property
    def redis_url_redacted(self) -> str:
        """The Redis URL with any password replaced by `***`, safe for logs and status output."""
        return redact_url(self.redis_url)

    @property
    def redis_endpoint(self) -> str:
        """Where the queue Redis is, safe for messages and status: the redacted URL, or with Sentinel the master's
        name and the sentinels (the URL then gives only the database and credentials)."""
        if not self.redis_sentinels:
            return self.redis_url_redacted
        sentinels = ",".join(f"{host}:{port}" for host, port in self.redis_sentinels)
        return f"sentinel master {self.redis_sentinel_master!r} at {sentinels} ({self.redis_url_redacted})"


SECRET_QUERY_PARAMETERS = ("password", "username")
"""Query parameters that carry credentials in a Redis URL (redis-py passes every query parameter to the
connection: `redis://host:6379/0?password=…&username=…`)."""
_SECRET_IN_QUERY = re.compile(r"(?i)([?&;])((?:%s)=)[^&;#]*" % "|".join(SECRET_QUERY_PARAMETERS))


def redact_url(url: str) -> str:
    """`url` with every credential replaced by `***`: the password of its user part (`redis://user:***@host`,
    `redis://:***@host`) and the values of its `password=` and `username=` query parameters."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    # The user part ends at the last '@' before the query: a password holding '/' or '@' is still all hidden.
    userinfo, at, host_path = rest[:cut].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    head = f"{user}:***{at}{host_path}" if colon else rest[:cut]
    query = _SECRET_IN_QUERY.sub(r"\1\2***", rest[cut:])
    return f"{scheme}{sep}{head}{query}"
