"""`bookrec worker`: run a supervisor that keeps N RQ worker processes, each holding the model, alive."""

from __future__ import annotations

import argparse

from shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, Keys
from shared.logs import setup_logging
from shared.redis_conn import connect
from shared.settings import Settings

KNOWN_QUEUES = (QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN)


def _queues(text: str) -> list[str]:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in KNOWN_QUEUES]
    if not queues or unknown:
        raise argparse.ArgumentTypeError(f"queues must be a comma-separated subset of {','.join(KNOWN_QUEUES)}; got {text!r}")
    return queues


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--processes must be a whole number, got {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"--processes must be from 1 to 64, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec worker`."""
    parser = subparsers.add_parser(
        "worker",
        help="run worker processes that serve recommend/refresh (or retrain) jobs",
        description="Start N worker processes. Each loads the production model, the book metadata and every "
        "user's rated books once, then serves jobs from the given queues in priority order, swapping to a newly "
        "promoted model between jobs. Dead processes are restarted and their job handed back to the queue. "
        "SIGTERM/Ctrl-C stops each process after its current job. Run a separate `--queues retrain` worker "
        "(the trainer) so training never starves serving.",
    )
    parser.add_argument("--queues", type=_queues, default=[QUEUE_RECOMMEND, QUEUE_REFRESH], metavar="Q1,Q2",
                        help="queues in priority order (default: recommend,refresh; the trainer uses: retrain)")
    parser.add_argument("--processes", type=_processes, default=1, metavar="N", help="worker processes to run (default: 1)")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty instead of waiting for jobs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the supervisor until stopped."""
    from worker.pool import Supervisor

    settings = Settings.from_env()
    setup_logging(settings.log_level)
    return Supervisor(args.queues, args.processes, burst=args.burst, client=connect(settings),
                      keys=Keys(settings.key_prefix), swap_slots=settings.swap_slots).run()
