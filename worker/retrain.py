"""The retrain job's body: one at a time, progress in job meta, train, gate, promote, refresh, retain."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from model_store.promotion import promote
from shared.errors import RetrainRunning
from shared.keys import QUEUE_REFRESH
from shared.redis_conn import delete_if_held, text
from worker import gate
from worker.context import WorkerContext
from worker.pipeline import TrainRequest, train_version

logger = logging.getLogger(__name__)


def acquire_lock(ctx: WorkerContext, job_id: str) -> None:
    """Hold the retrain lock for `job_id` (it may already hold it: the producer takes it at enqueue time)."""
    key = ctx.keys.retrain_lock
    if ctx.client.set(key, job_id, nx=True, ex=ctx.settings.retrain_lock_ttl):
        return
    holder = text(ctx.client.get(key))
    if holder not in (None, job_id):
        raise RetrainRunning(holder)
    ctx.client.set(key, job_id, ex=ctx.settings.retrain_lock_ttl)


def release_lock(ctx: WorkerContext, job_id: str) -> None:
    """Release the retrain lock if `job_id` still holds it."""
    try:
        delete_if_held(ctx.client, ctx.keys.retrain_lock, job_id)
    except Exception:  # Redis gone: the lock expires on its own
        logger.debug("retrain lock not released by %s", job_id)


class _Progress:
    """Writes stage, epoch, loss and ETA into the job's meta, and keeps the lock alive while training."""

    def __init__(self, ctx: WorkerContext, job: Job | None, job_id: str) -> None:
        self.ctx, self.job, self.job_id = ctx, job, job_id
        self.started = time.monotonic()

    def stage(self, name: str) -> None:
        self._save({"stage": name})

    def epoch(self, done: int, planned: int, logs: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (planned - done) if done else None
        self._save({"stage": "train", "epoch": done, "epochs": planned, "loss": logs.get("loss"), "eta_s": round(eta, 1) if eta is not None else None})

    def _save(self, values: dict[str, Any]) -> None:
        self.ctx.client.expire(self.ctx.keys.retrain_lock, self.ctx.settings.retrain_lock_ttl)
        if self.job is not None:
            self.job.meta.update(values)
            self.job.save_meta()


def run_retrain(ctx: WorkerContext, job: Job | None, model: str | None, params: dict, ratings: Path, books: Path | None, force: bool, seed: int) -> dict[str, Any]:
    """Train a candidate, gate it against production on the same split, promote it if it passes."""
    job_id = job.id if job is not None else f"local-{time.time():.0f}"
    acquire_lock(ctx, job_id)
    try:
        progress = _Progress(ctx, job, job_id)
        production = ctx.store.production()
        request = TrainRequest(ratings=ratings, books=books if books and books.exists() else None, kind=model, params=params, seed=seed)
        result = train_version(ctx.store, request, on_epoch=progress.epoch, on_stage=progress.stage, compare_with=production)
        decision = gate.decide(result["gate_metric"], result["metrics"], result["production_metrics"], ctx.settings.gate_tolerance, force)
        progress.stage("promote" if decision["promote"] else "rejected")
        refresh_job = None
        if decision["promote"]:
            promote(ctx.store, ctx.client, ctx.keys, result["version"], reason=f"retrain {job_id}")
            refresh_job = Queue(QUEUE_REFRESH, connection=ctx.client, serializer=JSONSerializer).enqueue(
                "worker.jobs.refresh", retry=Retry(max=2), job_timeout=ctx.settings.job_timeout, description=f"refresh after {result['version']}"
            ).id
        deleted = ctx.store.retain(ctx.settings.keep_versions)
        ctx.store.clean_temp()  # half-written versions left by saves killed over an hour ago
        logger.info("retrain %s: %s", job_id, decision["reason"])
        return {
            "version": result["version"],
            "model": result["model"],
            "metrics": result["metrics"],
            "baselines": result["baselines"],
            "production": {"version": production, "metrics": result["production_metrics"]},
            "decision": decision,
            "promoted": decision["promote"],
            "refresh_job": refresh_job,
            "deleted_versions": deleted,
            "seconds": result["seconds"],
        }
    finally:
        release_lock(ctx, job_id)
