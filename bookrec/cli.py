"""The `bookrec` command line: parses arguments, dispatches to a command module, turns errors into one line.

Each command group lives in `producer/commands/<group>.py` and exposes `register(subparsers)`;
a handler takes the parsed `argparse.Namespace` and returns an exit code. Commands that need
TensorFlow import it inside their handler, so `bookrec --help` and the client commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from bookrec.shared.errors import BookrecError

COMMAND_MODULES = (
    "bookrec.commands.data",
    "bookrec.commands.train",
    "bookrec.commands.models",
    "bookrec.commands.service",
    "bookrec.commands.ratings",
    "bookrec.commands.ingest",
    "bookrec.commands.scheduler",
    "bookrec.commands.dashboard",
    "bookrec.commands.worker",
    "bookrec.commands.init",
    "bookrec.commands.db",
    "bookrec.commands.demo",
    "bookrec.commands.bench",
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors exit 2 with one line, like every other bookrec error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"bookrec: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full `bookrec` argument parser with every command group that is installed."""
    parser = _Parser(
        prog="bookrec",
        description="Event-driven book recommendations: train models, run workers, request and read cached top-N lists.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bookrec` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except BookrecError as exc:
        print(f"bookrec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bookrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
