"""The per-process state job functions use: settings, Redis, key schema, model store, served model.

A worker process calls `install` once at start; job functions call `get`. Keeping it here
(and not in globals scattered over modules) lets tests install a context with fakeredis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from bookrec.model_store.store import ModelStore
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings

if TYPE_CHECKING:  # bookrec.worker.serve.swap imports TensorFlow; the supervisor imports this module and must not
    from bookrec.worker.serve.swap import ModelHolder


@dataclass
class WorkerContext:
    """What a job function may use in the process that runs it."""

    settings: Settings
    client: redis.Redis
    keys: Keys
    store: ModelStore
    holder: "ModelHolder | None"  # None in a trainer process that serves no recommend queue
    cache_n: int = 0  # the largest `cache:n` this process has seen: lists are computed at least this long


_context: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    """Make `context` the one job functions in this process use."""
    global _context
    _context = context


def get() -> WorkerContext:
    """The installed context; RuntimeError if this process is not a bookrec worker."""
    if _context is None:
        raise RuntimeError("bookrec job functions run only inside a bookrec worker process (`bookrec worker`)")
    return _context
