"""`bookrec worker`: run a supervisor that keeps N RQ worker processes, each holding the model, alive."""

from __future__ import annotations

import argparse

from bookrec.commands.common import needs_worker_side
from bookrec.worker.serve import supervisor


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec worker`."""
    parser = subparsers.add_parser(
        "worker",
        help="run worker processes that serve recommend/refresh (or retrain) jobs",
        description=supervisor.DESCRIPTION,
    )
    supervisor.add_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the supervisor until stopped."""
    needs_worker_side("bookrec worker")
    return supervisor.run(args)
