"""Output helpers every command module shares: JSON, plain tables, progress bars, a Redis connection."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import redis

from bookrec.shared.errors import MissingDependency
from bookrec.shared.redis_conn import connect, ping
from bookrec.shared.settings import Settings


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout."""
    print(json.dumps(data, indent=2, default=str))


def table(headers: Sequence[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table: rounded float, integer as is, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def describe_entry(entry: dict[str, Any]) -> str:
    """A cached list as text: a heading (user, length, model, time, fallback) and a table of its books."""
    rows = [
        [
            str(i + 1),
            str(item["book_id"]),
            (item.get("title") or "")[:60],
            (item.get("authors") or "")[:30],
            number(item.get("year")),
            number(item["score"]),
        ]
        for i, item in enumerate(entry["items"])
    ]
    fallback = " (cold start: most popular books)" if entry.get("fallback") else ""
    head = f"user {entry['user_id']}: top {len(entry['items'])} by model {entry['model_version']} at {entry['generated_at']}{fallback}"
    return head + "\n" + table(["#", "book_id", "title", "authors", "year", "score"], rows)


def show_progress(as_json: bool) -> bool:
    """Whether to draw progress bars: on a terminal, and never with --json."""
    return not as_json and sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | None, description: str, enabled: bool, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar on stderr when enabled, else an object whose update/set_postfix do nothing."""
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=True) as bar:
        yield bar


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    n = 0
    total = None

    def refresh(self) -> None:
        pass


def redis_client(settings: Settings) -> redis.Redis:
    """A connected Redis client for the CLI; RedisUnavailable with the (redacted) URL if it does not answer."""
    client = connect(settings)
    ping(client, settings)
    return client


WORKER_SIDE = ("tensorflow", "keras", "numpy", "pandas")
"""What `bookrec[worker]` brings that the worker-side commands import (matplotlib only for plots)."""


def needs_worker_side(command: str, modules: Sequence[str] = WORKER_SIDE) -> None:
    """MissingDependency (exit 2, one line) unless every module in `modules` is installed; imports none of them."""
    needs_extra(command, "worker", modules)


def needs_extra(command: str, extra: str, modules: Sequence[str]) -> None:
    """MissingDependency (exit 2, one line) naming bookrec[`extra`] unless every module in `modules` (what that extra
    brings) is installed; imports none of them."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise MissingDependency(
            f"`{command}` needs bookrec[{extra}] (pip install 'bookrec[{extra}]'); not installed: {', '.join(missing)}"
        )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def json_object(text: str) -> dict[str, Any]:
    """A --params value: a JSON object (argparse turns the error into one line and exit 2)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of hyper-parameters is needed, got {text!r}")
    return value
