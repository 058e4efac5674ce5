"""TensorFlow process settings: a quiet import, and thread pools sized to the cores this process should use."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from bookrec.shared.keys import QUEUE_RETRAIN


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a moment (TensorFlow's C++ start-up banner ignores log levels)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def threads_for(queues: list[str], configured: int | None) -> int:
    """TensorFlow threads for a worker on `queues`: BOOKREC_TF_THREADS if set, else 0 (all cores) for a
    trainer (only the retrain queue) and 1 for a serving worker (one process per core)."""
    if configured is not None:
        return configured
    return 0 if queues and all(q == QUEUE_RETRAIN for q in queues) else 1


def configure_tensorflow(threads: int) -> None:
    """Import TensorFlow without its start-up banner and size its thread pools (0 = all cores).

    Call before anything else imports TensorFlow. Two worker processes on two cores each use one
    thread, so they do not oversubscribe the CPU.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_silenced():
        import tensorflow as tf

        if threads > 0:  # before the first op: once an op has run, the pools are fixed
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # already initialised in this process: keep the pools it has
        tf.constant(0.0) + 1.0  # the CPU-feature notice is printed at the first op
