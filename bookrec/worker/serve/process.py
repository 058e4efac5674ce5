"""One worker process: load the production model, watch for promotions, serve jobs until told to stop.

A promotion is taken between jobs (see worker/swap.py), so no job runs beside a model load.

Started by the supervisor (`bookrec worker`, see supervisor.py) as
`python -m bookrec.worker.serve.process --queues recommend,fresh,refresh --name NAME --supervisor PID [--burst]`.
If Redis goes away, or refuses writes (out of memory, a read-only replica, MISCONF), the process waits
with backoff and resumes with the model still loaded: it never exits for it. If its supervisor dies
(even by SIGKILL), the process gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops after its
current job, so no worker outlives its supervisor unsupervised.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import redis

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_RETRAIN, Keys
from bookrec.shared.logs import setup_logging
from bookrec.shared.redis_conn import CONNECTION_ERRORS, Backoff, connect, refuses_writes
from bookrec.shared.settings import Settings
from bookrec.worker.serve import context
from bookrec.worker.serve.supervisor import recover_abandoned
from bookrec.worker.serve.tf_setup import configure_tensorflow, threads_for

if TYPE_CHECKING:
    from rq.worker import BaseWorker

logger = logging.getLogger("bookrec.worker.serve.process")

EXIT_CONFIG = 3
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal this process gets when its parent dies


class _StopFlag:
    """Set by SIGTERM/SIGINT outside of RQ's work loop (RQ installs its own handlers while working)."""

    def __init__(self) -> None:
        self.stop = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum, frame) -> None:
        self.stop = True


def wait_for_redis(client: redis.Redis, flag: _StopFlag) -> None:
    """Block (with capped exponential backoff) until Redis answers or a stop is requested."""
    delay = 0.2
    while not flag.stop:
        try:
            client.ping()
            return
        except CONNECTION_ERRORS as exc:
            logger.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def die_with_parent(parent: int) -> bool:
    """Ask the kernel to SIGTERM this process when its parent dies (a warm stop after the current job); False if
    the parent `parent` is already gone (it died before the request), so the caller stops at once."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logger.warning(
                "prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive its supervisor", ctypes.get_errno()
            )
    except (OSError, AttributeError):  # not Linux
        logger.warning("no prctl(PR_SET_PDEATHSIG) here: this worker may outlive its supervisor")
    return os.getppid() == parent


def _retire(worker: BaseWorker, flag: _StopFlag) -> None:
    """Mark a worker whose loop ended as dead in Redis, so its successor can register under the same name.

    While Redis refuses writes it retries with backoff (RQ refuses to register a name still alive).
    """
    backoff = Backoff(logger)
    while not flag.stop:
        try:
            worker.register_death()
            return
        except CONNECTION_ERRORS as exc:
            logger.warning("could not retire worker %s: %s", worker.name, exc)
            return
        except redis.exceptions.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            backoff.pause(f"retiring worker {worker.name}: Redis refuses writes", exc)


def serve(settings: Settings, queues: list[str], name: str, burst: bool) -> int:
    """Run the worker loop on logical `queues` (`recommend`, `refresh`, `retrain`); return the process exit code."""
    from bookrec.worker.serve.rq_worker import BookrecWorker
    from bookrec.worker.serve.swap import ModelHolder

    flag = _StopFlag()
    client = connect(settings, socket_timeout=None)
    keys = Keys(settings.key_prefix)
    store = ModelStore(settings.model_store)
    wait_for_redis(client, flag)
    # What is imported by now (TensorFlow, RQ: ~350,000 objects) lives as long as the process. Frozen, it is
    # out of the cyclic GC's reach: a full collection takes ~1 ms instead of ~250 ms, so neither Python's own
    # collections nor the one after a hot swap stall a job. Models, loaded after this, stay collectable.
    gc.collect()
    gc.freeze()
    holder = None
    rq_queues = [keys.queue(q) for q in queues]  # this deployment's RQ queues (see Keys.queue)
    if any(q != QUEUE_RETRAIN for q in queues):
        holder = ModelHolder(store, client, keys, name, rq_queues, slots=settings.swap_slots)
        holder.load_initial(stopped=lambda: flag.stop)
        if flag.stop:
            holder.stop()
            return 0
        holder.start()
    context.install(context.WorkerContext(settings, client, keys, store, holder))
    refused = Backoff(logger)
    try:
        while not flag.stop:
            # Queue names, not Queue objects: the worker then builds its queues with the JSON serializer and
            # AllowlistedJob, so registry maintenance never unpickles a job's meta nor runs its callbacks.
            worker = BookrecWorker(
                rq_queues, connection=client, name=name, between_jobs=holder.swap_if_due if holder else None
            )
            try:
                worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
            except CONNECTION_ERRORS as exc:  # RQ's own teardown talks to Redis and raises again when it is gone
                logger.warning("worker loop lost Redis: %s", exc)
            except redis.exceptions.ResponseError as exc:  # e.g. registering the worker while Redis refuses writes
                if not refuses_writes(exc):
                    raise
                refused.pause("worker loop: Redis refuses writes", exc)
            if burst or worker.stop_asked:
                break
            logger.warning(
                "worker loop ended (Redis lost or refusing writes?); waiting for Redis and resuming with the model loaded"
            )
            wait_for_redis(client, flag)
            # A job this loop held when Redis went (its end could not be written, or a failover lost it) is
            # still marked as running here on a primary that outlived it: hand it back before the next loop.
            recover_abandoned(client, worker.name)
            _retire(worker, flag)
    finally:
        if holder is not None:
            holder.stop()
    return 0


def _threads_text(threads: int) -> str:
    return "all cores" if threads == 0 else f"{threads} thread{'s' if threads > 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of one worker process."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.worker.serve.process")
    parser.add_argument("--queues", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--supervisor", type=int, help="the supervisor's pid: stop when it dies")
    args = parser.parse_args(argv)
    if args.supervisor is not None and not die_with_parent(args.supervisor):
        print(f"bookrec worker: supervisor {args.supervisor} is gone; not starting", file=sys.stderr)
        return 0
    try:
        settings = Settings.from_env()
    except BookrecError as exc:
        print(f"bookrec worker: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    queues = [q for q in args.queues.split(",") if q]
    threads = threads_for(queues, settings.tf_threads)
    configure_tensorflow(threads)
    logger.info("worker %s on %s: TensorFlow uses %s", args.name, ",".join(queues), _threads_text(threads))
    try:
        return serve(settings, queues, args.name, args.burst)
    except BookrecError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
