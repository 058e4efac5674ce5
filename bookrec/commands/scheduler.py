"""`bookrec scheduler`: retrain on a schedule (README: Schedules)."""

from __future__ import annotations

import argparse

from bookrec.commands.common import redis_client
from bookrec.commands.db import open_store
from bookrec.shared.errors import ConfigError
from bookrec.shared.settings import Settings

DESCRIPTION = (
    "Enqueue retrains on a schedule with rq.cron: at each time of BOOKREC_RETRAIN_CRON (a cron expression in the "
    "host's local time, e.g. '0 3 * * *'), and once BOOKREC_RETRAIN_AFTER_RATINGS ratings arrived in the ratings store "
    "since production's snapshot (counted every BOOKREC_RETRAIN_CHECK_S seconds). Each goes through the retrain lock as "
    "`bookrec retrain` does: with a retrain already queued or running it is a no-op, logged. Run one per deployment; "
    "it logs each enqueue, serves Prometheus metrics on BOOKREC_SCHEDULER_METRICS_PORT (0: none) and stops on "
    "SIGTERM or Ctrl-C. Exits 2 when neither setting is set."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec scheduler`."""
    parser = subparsers.add_parser(
        "scheduler", help="enqueue retrains on a cron schedule and/or after N new ratings", description=DESCRIPTION
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the scheduler until SIGTERM or Ctrl-C."""
    from bookrec.shared.logs import setup_logging

    settings = Settings.from_env()
    if not settings.retrain_cron and not settings.retrain_after_ratings:
        raise ConfigError(
            "nothing to schedule: set BOOKREC_RETRAIN_CRON (a cron expression, e.g. '0 3 * * *') and/or "
            "BOOKREC_RETRAIN_AFTER_RATINGS (a number of new ratings, e.g. 1000)"
        )
    setup_logging(settings.log_level)
    connection = redis_client(settings)  # RedisUnavailable at once, in one line, if Redis does not answer
    ratings = None
    if settings.retrain_after_ratings:
        ratings = open_store(settings.database_url)
        ratings.upgrade()  # RatingsStoreError (exit 11) at once if the store does not answer
    from bookrec.producer.client import Client
    from bookrec.scheduler import process

    try:
        process.run(settings, Client(settings=settings, connection=connection), ratings)
    finally:
        if ratings is not None:
            ratings.close()
    return 0
