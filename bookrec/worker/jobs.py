"""The job functions workers run, under their public names (`bookrec.shared.jobs`): the only ones they will run.

Each takes JSON-serialisable arguments, validates them as they arrive from Redis (with
`bookrec.shared.payloads`), and returns a JSON-serialisable summary.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rq import Queue, get_current_job
from rq.exceptions import DeserializationError
from rq.serializers import JSONSerializer

from bookrec.shared import delta, jobs, payloads, pending
from bookrec.shared.errors import ValidationError
from bookrec.shared.keys import QUEUE_REFRESH
from bookrec.worker.serve import context, metrics

if TYPE_CHECKING:
    from rq.job import Job

    from bookrec.worker.serve.runtime import Batch, ModelRuntime

logger = logging.getLogger(__name__)

REFRESH_COUNTER_TTL = 86400
MAX_REJECTED_LISTED = 20
"""Bad ids a recommend job's result lists (each quoting a short prefix); `rejected_count` counts them all."""
FRESH_ROUNDS = 3
"""Times a fresh job computes a reader whose ratings keep changing meanwhile before handing them to a new job."""
CLAIM_MARGIN_S = 60
"""Seconds a fresh job's claim on a reader outlives the job's timeout (then another job may take the reader)."""
TAKE_AGAIN_S = 0.05
"""A fresh job without `user_ids` takes pending readers again after caching a batch while it has run less than this."""


def recommend(
    user_ids: list, n: int = 10, refresh_id: str | None = None, model_version: str | None = None
) -> dict[str, Any]:
    """Compute and cache the top unseen books of each user (1 to 1,000 ids) in one batch.

    Each list holds the deployment's list length (`cache:n`: the largest n ever asked for, at least
    BOOKREC_CACHE_N and at least `n`), so a short request never shrinks a longer list another caller
    relies on; readers take the first n items. A reader's seen books are their current history: the version's
    plus their delta (shared/delta.py), read for the whole batch in one round trip; a reader whose delta changes
    before the write keeps the list the fresh job for that change writes. Ids that are not ids (wrong type, empty)
    are skipped and listed in `rejected` (the first MAX_REJECTED_LISTED of them; `rejected_count` counts all); the
    others are served. With `model_version` (set by refresh) a worker still on an older version swaps before
    computing, and one that cannot serve that version fails with VersionNotServed.
    Returns {"users", "fallbacks", "rejected", "rejected_count", "model_version", "n", "seconds"}.
    """
    started = time.perf_counter()
    good, rejected = _checked_users(user_ids)
    n = payloads.count_n(n)
    ctx = _serving_context()
    # Read once: the whole job runs on this version. A refresh chunk runs on the version its refresh is for or
    # fails (VersionNotServed, retried by RQ) without counting its users, so a refresh is done only on that version.
    runtime = ctx.holder.current if model_version is None else ctx.holder.runtime_for(model_version)
    refresh = (ctx.keys.refresh_done(refresh_id), len(user_ids), REFRESH_COUNTER_TTL) if refresh_id else None
    deltas = delta.read(ctx.client, ctx.keys, good)
    batch, length, _ = _cache_lists(ctx, runtime, good, deltas, max(n, ctx.settings.cache_n), refresh, "")
    return {
        "users": len(good),
        "fallbacks": batch.fallbacks if batch else 0,
        "rejected": rejected[:MAX_REJECTED_LISTED],
        "rejected_count": len(rejected),
        "model_version": runtime.version,
        "n": length,
        "seconds": round(time.perf_counter() - started, 4),
    }


def fresh(user_ids: list | None = None) -> dict[str, Any]:
    """Recompute and cache the lists of readers whose delta changed since their list was computed: without
    `user_ids` (as the ingest enqueues it), up to 1,000 of the readers waiting in the pending set (shared/pending.py),
    oldest first, waking another fresh job if more wait, and again after caching them while the job has run less
    than TAKE_AGAIN_S (readers whose ratings arrived meanwhile are recomputed at once, not after a worker picks up
    the job their commit woke); else the readers among `user_ids` (1 to 1,000).
    Coalesced: a reader is claimed (shared/delta.py `claim`) by one job at a time, and one whose list already follows
    their delta is skipped. A reader whose delta changes while this job computes is computed again, up to
    FRESH_ROUNDS times, then handed back to the pending set. A job killed holding readers is run again under its own
    id, which takes and claims the same readers again (nothing is lost).
    Returns {"users", "recomputed", "rounds", "takes", "waiting", "rejected", "rejected_count", "model_version", "n",
    "seconds"} (`waiting`: readers left in the pending set at its last take).
    """
    started = time.perf_counter()
    ctx = _serving_context()
    runtime = ctx.holder.current
    job = get_current_job()
    job_id = job.id if job is not None else uuid.uuid4().hex
    lease_ms = (ctx.settings.job_timeout + CLAIM_MARGIN_S) * 1000
    summary = {"users": 0, "recomputed": 0, "rounds": 0, "takes": 0, "waiting": 0, "n": ctx.settings.cache_n}
    if user_ids is None:
        rejected = _recompute_pending(ctx, runtime, job_id, lease_ms, summary, started + TAKE_AGAIN_S)
    else:
        good, rejected = _checked_users(user_ids)
        _recompute(ctx, runtime, good, job_id, lease_ms, summary)
    logger.debug("fresh: %s", summary)
    return {
        **summary,
        "rejected": rejected[:MAX_REJECTED_LISTED],
        "rejected_count": len(rejected),
        "model_version": runtime.version,
        "seconds": round(time.perf_counter() - started, 4),
    }


def _recompute_pending(
    ctx: context.WorkerContext,
    runtime: ModelRuntime,
    job_id: str,
    lease_ms: int,
    summary: dict[str, int],
    take_until: float,
) -> list[dict[str, str]]:
    """Take pending readers for fresh job `job_id` and `_recompute` them, again while there are some and
    `time.perf_counter()` is before `take_until`; the ids rejected."""
    rejected: list[dict[str, str]] = []
    while True:
        first = summary["takes"] == 0
        taken, summary["waiting"] = pending.take(
            ctx.client, ctx.keys, job_id, payloads.MAX_USERS_PER_JOB, lease_ms, first
        )
        if summary["waiting"]:  # more than one job's worth: another worker may take them while this one computes
            pending.ensure_job(ctx.client, ctx.keys, ctx.settings)
        if not taken:
            return rejected
        good, bad = payloads.split_valid(taken)
        rejected += bad
        _recompute(ctx, runtime, good, job_id, lease_ms, summary)
        pending.release(ctx.client, ctx.keys, job_id)
        summary["takes"] += 1
        if time.perf_counter() >= take_until:
            return rejected


def _recompute(
    ctx: context.WorkerContext,
    runtime: ModelRuntime,
    readers: list[str],
    job_id: str,
    lease_ms: int,
    summary: dict[str, int],
) -> None:
    """Claim, recompute and cache the lists of `readers` for fresh job `job_id` (up to FRESH_ROUNDS rounds for those
    whose delta moved meanwhile, then back into the pending set); counts go into `summary`."""
    todo = readers
    summary["users"] += len(readers)
    for _ in range(FRESH_ROUNDS):
        claimed = delta.claim(ctx.client, ctx.keys, todo, job_id, lease_ms)
        users = [user for user, found in zip(todo, claimed) if found is not None]
        if not users:  # each is up to date, or another job holds it (and computes it again if it moves)
            return
        summary["rounds"] += 1
        found = [d for d in claimed if d is not None]
        _, summary["n"], skipped = _cache_lists(ctx, runtime, users, found, summary["n"], None, job_id)
        left = set(skipped)
        metrics.fresh_lists_written(d.through for i, d in enumerate(found) if i not in left)
        summary["recomputed"] += len(users)
        todo = [users[i] for i in skipped]
        if not todo:
            return
    logger.warning("%d readers' ratings kept changing during %d recomputes; handing them on", len(todo), FRESH_ROUNDS)
    pending.add_and_wake(ctx.client, ctx.keys, ctx.settings, todo)


def _checked_users(user_ids: Any) -> tuple[list[str], list[dict[str, str]]]:
    """A job's `user_ids` split into the good ids and the rejected ones; ValidationError if unusable as a whole."""
    if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, (list, tuple)) or not user_ids:
        raise ValidationError(f"user_ids must be a non-empty list, got {user_ids!r:.80}")
    if len(user_ids) > payloads.MAX_USERS_PER_JOB:
        raise ValidationError(f"{len(user_ids)} user ids in one job; at most {payloads.MAX_USERS_PER_JOB} are allowed")
    return payloads.split_valid(list(user_ids))


def _serving_context() -> context.WorkerContext:
    """This worker's context; RuntimeError if it serves no model (a trainer)."""
    ctx = context.get()
    if ctx.holder is None or ctx.holder.current is None:
        raise RuntimeError("this worker has no model loaded; serving jobs belong on the fresh/recommend/refresh queues")
    return ctx


def _cache_lists(
    ctx: context.WorkerContext,
    runtime: ModelRuntime,
    users: list[str],
    deltas: list[delta.ReaderDelta],
    length: int,
    refresh: tuple[str, int, int] | None,
    job_id: str,
) -> tuple[Batch | None, int, list[int]]:
    """Compute `users`' lists at least `length` long (and at least `cache:n`) and cache them in one transaction
    (with a refresh chunk's progress, releasing the claims of fresh job `job_id`); computed again, longer, if
    another request raised `cache:n` meanwhile. Returns the batch, the length used and the positions of the
    readers skipped (their delta changed since it was read)."""
    length = max(length, ctx.cache_n)
    queue = metrics.current_queue()
    while True:
        batch = runtime.recommend(users, length, deltas) if users else None
        lists = [(u, e, d.seq) for u, e, d in zip(users, batch.entries, deltas)] if batch else []
        larger, skipped = delta.write_lists(
            ctx.client, ctx.keys, lists, length, ctx.settings.cache_expiry, job_id, refresh
        )
        written = 0 if larger else len(lists) - len(skipped)
        metrics.lists_cached(queue, len(users), batch.fallbacks if batch else 0, written)
        if larger is None:
            return batch, length, skipped
        logger.info("lists are now %d long (cache:n), not %d: computing this batch again", larger, length)
        ctx.cache_n = length = larger


def refresh(start: int | None = None, stop: int | None = None, n: int = 10, chunk: int | None = None) -> dict[str, Any]:
    """Recompute every known user's entry (or users[start:stop] in model order) by fanning out recommend jobs.

    Chunks go on the `refresh` queue, shared by all replicas; each adds its user count to
    `refresh:{id}:done` once it has run on the production version this job fanned out for (VersionNotServed
    if this worker cannot serve that version). Returns {"refresh_id", "users", "chunks", "model_version"}; job meta holds the same.
    """
    n = payloads.count_n(n)
    ctx = context.get()
    if ctx.holder is None or ctx.holder.current is None:
        raise RuntimeError("this worker has no model loaded, so it does not know the users to refresh")
    runtime = ctx.holder.runtime_for()  # production's version: swapped to first, or VersionNotServed
    chunk = int(chunk or ctx.settings.refresh_chunk)
    if not 1 <= chunk <= payloads.MAX_USERS_PER_JOB:
        raise ValidationError(f"chunk must be from 1 to {payloads.MAX_USERS_PER_JOB}, got {chunk}")
    users = runtime.user_map.to_list()[slice(payloads.index_bound(start, "start"), payloads.index_bound(stop, "stop"))]
    refresh_id = uuid.uuid4().hex[:12]
    # Written before any chunk and by nothing else: if it vanishes (Redis flushed or restarted empty), the
    # chunks went with it, which is how `refresh --wait` tells a lost refresh from a slow one.
    ctx.client.set(ctx.keys.refresh_users(refresh_id), len(users), ex=REFRESH_COUNTER_TTL)
    queue = Queue(ctx.keys.queue(QUEUE_REFRESH), connection=ctx.client, serializer=JSONSerializer)
    specs = [
        jobs.recommend(
            {"user_ids": users[i : i + chunk], "n": n, "refresh_id": refresh_id, "model_version": runtime.version},
            ctx.settings,
            description=f"refresh {refresh_id} users {i}..{i + len(users[i : i + chunk]) - 1}",
        )
        for i in range(0, len(users), chunk)
    ]
    for start_at in range(0, len(specs), 500):
        queue.enqueue_many(specs[start_at : start_at + 500])
    summary = {"refresh_id": refresh_id, "users": len(users), "chunks": len(specs), "model_version": runtime.version}
    job = get_current_job()
    if job is not None:
        job.meta.update(summary)
        job.save_meta()
    logger.info("refresh %s: %d users in %d chunks", refresh_id, len(users), len(specs))
    return summary


def refresh_chunk_failed(job: Job) -> None:
    """Count a refresh chunk that failed for good: its users go to `refresh:{id}:failed`, so the refresh can end."""
    try:
        refresh_id = job.kwargs.get("refresh_id") if job.func_name == jobs.RECOMMEND else None
        users = len(job.kwargs.get("user_ids") or [])
    except (DeserializationError, AttributeError, TypeError):
        return
    if not refresh_id:
        return
    ctx = context.get()
    with ctx.client.pipeline(transaction=False) as pipe:
        pipe.incrby(ctx.keys.refresh_failed(refresh_id), users)
        pipe.expire(ctx.keys.refresh_failed(refresh_id), REFRESH_COUNTER_TTL)
        pipe.execute()
    logger.warning("refresh %s: a chunk of %d users failed for good", refresh_id, users)


def retrain(
    model: str | None = None,
    params: dict | None = None,
    ratings: str | None = None,
    books: str | None = None,
    force: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a new version on one snapshot of the ratings store (BOOKREC_DATABASE_URL), or on the `ratings` file
    named in BOOKREC_DATA_DIR, gate it against production, promote it if it passes.

    One retrain at a time (a Redis lock with expiry). Progress (stage, epoch, loss, ETA) goes in
    job meta. Returns the candidate's and production's metrics and the decision.
    """
    from bookrec.worker.serve.retrain import release_lock, run_retrain

    ctx = context.get()
    job = get_current_job()
    try:
        model = payloads.model_kind(model)
        params = payloads.hyper_params(params, model)
        ratings_path = None if ratings is None else payloads.data_path(ctx.settings.data_dir, ratings, "ratings")
        books_path = _books_path(ctx.settings.data_dir, books)
        force, seed = payloads.flag(force, "force"), payloads.seed(seed)
    except ValidationError:
        if job is not None:
            release_lock(ctx, job.id)  # the producer took the lock for this job when it enqueued it
        raise
    return run_retrain(ctx, job, model, params, ratings_path, books_path, force, seed)


def _books_path(data_dir: Path, books: str | None) -> Path | None:
    """A named books file (it must exist: the retrain fails naming it otherwise), or for None the default
    books.csv when it is there and no books at all when it is not."""
    if books is not None:
        return payloads.data_path(data_dir, books, "books")
    default = payloads.data_path(data_dir, payloads.DEFAULT_BOOKS, "books")
    return default if default.exists() else None


FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    jobs.RECOMMEND: recommend,
    jobs.REFRESH: refresh,
    jobs.RETRAIN: retrain,
    jobs.FRESH: fresh,
}
"""The allowlist: each public job name and the function a worker runs for it."""
