"""What `bookrec status` (and the dashboard's overview) says about schedules: this deployment's live schedulers and when
their entries are due next (rq.cron's registry in Redis), and how many ratings production has not trained on (the
ratings store), which never makes the status fail; `service_status` adds them to `Client.status()`."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.cron import CronJob, CronScheduler

from bookrec.model_store.store import ModelStore
from bookrec.model_store.store import iso as store_iso
from bookrec.producer.client import Client
from bookrec.scheduler.backlog import horizon, iso
from bookrec.scheduler.triggers import AFTER_RATINGS, CRON
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import Keys
from bookrec.shared.redis_conn import CONNECTION_ERRORS, unavailable
from bookrec.shared.settings import Settings, redact_url


def service_status(client: Client) -> dict[str, Any]:
    """`Client.status()` with `scheduler` (`schedule_status`) and `ratings_since_production` (the ratings store,
    with `error` instead of a count when it cannot be read), and a warning if two schedulers run: what `bookrec
    status` prints. RedisUnavailable when Redis does not answer."""
    status = client.status()
    try:
        schedule = schedule_status(client.redis, client.keys)
    except CONNECTION_ERRORS as exc:
        raise unavailable(client.settings, exc) from None
    if schedule and len(schedule["schedulers"]) > 1:
        names = ", ".join(s["name"] for s in schedule["schedulers"])
        status["warnings"].append(
            f"{len(schedule['schedulers'])} schedulers run for this deployment ({names}); one is enough: the retrain "
            "lock makes the others' retrains no-ops"
        )
    status["scheduler"] = schedule
    status["ratings_since_production"] = ratings_since_production(client.settings, status["production_version"])
    return status


def schedulers(connection: Redis, keys: Keys) -> list[CronScheduler]:
    """This deployment's schedulers in rq.cron's registry (those holding one of its entries). One killed without
    unregistering stays listed until its hash expires, 120 s after its last heartbeat (rq's DEFAULT_CRON_SCHEDULER_TTL)."""
    names = {keys.cron_job(CRON), keys.cron_job(AFTER_RATINGS)}
    return [s for s in CronScheduler.all(connection, cleanup=False) if any(j.name in names for j in s.get_jobs())]


def schedule_status(connection: Redis, keys: Keys) -> dict[str, Any] | None:
    """{"schedulers": [{"name", "hostname", "pid"}], "cron", "next_retrain", "after_ratings", "check_every_s",
    "next_ratings_check"} (times ISO-8601 UTC; null for a trigger not set), or None when no scheduler runs."""
    found = schedulers(connection, keys)
    if not found:
        return None
    cron = _entries(found, keys.cron_job(CRON))
    checks = _entries(found, keys.cron_job(AFTER_RATINGS))
    return {
        "schedulers": [{"name": s.name, "hostname": s.hostname, "pid": s.pid} for s in found],
        "cron": cron[0].cron if cron else None,
        "next_retrain": _soonest(cron),
        "after_ratings": (checks[0].job_options.get("meta") or {}).get("after_ratings") if checks else None,
        "check_every_s": checks[0].interval if checks else None,
        "next_ratings_check": _soonest(checks),
    }


def ratings_since_production(settings: Settings, version: str | None) -> dict[str, Any]:
    """{"count", "since", "basis", "production", "error"}: the ratings rows the store wrote after production `version`'s
    horizon (see `backlog`). When the store is absent, not installed or unreachable, or production's metadata cannot be
    read here, `count` is None and `error` says why."""
    try:
        from bookrec.ratings.store import RatingsStore, missing_file
    except ModuleNotFoundError as exc:
        return _unknown(version, f"the ratings store needs bookrec[store] ({exc.name} is missing)")
    try:
        absent = missing_file(settings.database_url)
        if absent is not None:
            return _unknown(
                version,
                f"no ratings store at {redact_url(settings.database_url)} ({absent} does not exist; "
                "`bookrec db upgrade` creates it)",
            )
        seen = horizon(ModelStore(settings.model_store), version)
        store = RatingsStore(settings.database_url)
        try:
            changes = store.changed_since(seen.since)
        finally:
            store.close()
    except BookrecError as exc:
        return _unknown(version, str(exc))
    return {"count": changes.rows, "since": iso(seen.since), "basis": seen.basis, "production": version, "error": None}


def _unknown(version: str | None, error: str) -> dict[str, Any]:
    return {"count": None, "since": None, "basis": None, "production": version, "error": error}


def _entries(found: list[CronScheduler], name: str) -> list[CronJob]:
    return [job for scheduler in found for job in scheduler.get_jobs() if job.name == name]


def _soonest(entries: list[CronJob]) -> str | None:
    """The earliest next due time among `entries`, ISO-8601 UTC (None if none is due)."""
    times = [e.next_enqueue_time for e in entries if e.next_enqueue_time is not None]
    return store_iso(min(times)) if times else None
