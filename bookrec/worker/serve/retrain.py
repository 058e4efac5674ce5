"""The retrain job's body: one at a time, progress in job meta, read (a named file, or one snapshot of the ratings
store), train, gate, promote, refresh, retain.

A retrain stops on request (`retrain:{job}:cancel`, set by `Client.cancel_retrain`): the flag is
checked when it starts, at every stage and between training steps; it then raises RetrainCancelled
(the job ends FAILED with stage `cancelled`) and releases the lock. Once saving has begun it runs to the end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from rq.job import Job

from bookrec.model_store.promotion import promote, servable_production
from bookrec.model_store.store import REJECTED
from bookrec.shared import payloads
from bookrec.shared.errors import CatalogueMismatch, RetrainCancelled
from bookrec.shared.locks import CANCELLED_STAGE, RetrainLock
from bookrec.worker.learn import gate, training
from bookrec.worker.learn.datasets import RatingsData, fingerprint, read_books
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from bookrec.worker.serve import metrics
from bookrec.worker.serve.context import WorkerContext
from bookrec.worker.serve.store_ratings import read_store

logger = logging.getLogger(__name__)


def _lock(ctx: WorkerContext) -> RetrainLock:
    return RetrainLock(ctx.client, ctx.keys, ctx.settings.retrain_lock_ttl)


def release_lock(ctx: WorkerContext, job_id: str) -> None:
    """Release the retrain lock if `job_id` still holds it."""
    try:
        _lock(ctx).release(job_id)
    except Exception:  # Redis gone: the lock expires on its own
        logger.debug("retrain lock not released by %s", job_id)


class _Progress:
    """Writes stage, epoch, loss and ETA into the job's meta, keeps the lock alive while training, and stops the
    retrain (RetrainCancelled) when it is asked to."""

    def __init__(self, ctx: WorkerContext, job: Job | None, job_id: str) -> None:
        self.ctx, self.job, self.job_id = ctx, job, job_id
        self.started = time.monotonic()
        self.epoch_done: tuple[int, int] | None = None
        self.saving = False

    def stage(self, name: str) -> None:
        self.saving = self.saving or name == "save"  # from "save" on, the version is written: it runs to the end
        if not self.saving:
            self.check_cancel()
        self._save({"stage": name})

    def check_cancel(self) -> None:
        """Raise RetrainCancelled, noting it in the job's meta, if this retrain was asked to stop."""
        if not _lock(self.ctx).cancel_requested(self.job_id):
            return
        where = f" after epoch {self.epoch_done[0]} of {self.epoch_done[1]}" if self.epoch_done else ""
        self._save({"stage": CANCELLED_STAGE, "eta_s": None})
        raise RetrainCancelled(f"retrain {self.job_id} cancelled on request{where}; production unchanged")

    def epoch(self, done: int, planned: int, logs: dict[str, float]) -> None:
        self.epoch_done = (done, planned)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (planned - done) if done else None
        self._save(
            {
                "stage": "train",
                "epoch": done,
                "epochs": planned,
                "loss": logs.get("loss"),
                "eta_s": round(eta, 1) if eta is not None else None,
            }
        )

    def _save(self, values: dict[str, Any]) -> None:
        _lock(self.ctx).keep_alive()
        if self.job is not None:
            self.job.meta.update(values)
            self.job.save_meta()


def run_retrain(
    ctx: WorkerContext,
    job: Job | None,
    model: str | None,
    params: dict,
    ratings: Path | None,
    books: Path | None,
    force: bool,
    seed: int,
) -> dict[str, Any]:
    """Train a candidate, gate it against production on ratings neither trained on, promote it if it passes.

    `ratings` None means one snapshot of the ratings store at BOOKREC_DATABASE_URL (DataError if it holds none,
    RatingsStoreError if it does not answer). `books` None means none; callers that default to books.csv pass
    None when it is absent. With the ratings production was trained on (the same file, or a snapshot of the same
    rows) and no `force`, nothing is trained. A production version whose directory is gone is no production for
    the gate: the candidate is judged as the first one. Its duration and outcome go to the retrain metrics.
    """
    started = time.perf_counter()
    outcome = "failed"
    try:
        result = _retrain(ctx, job, model, params, ratings, books, force, seed)
        outcome = retrain_outcome(result)
        return result
    except RetrainCancelled:
        outcome = "cancelled"
        raise
    finally:
        metrics.retrain_ended(outcome, time.perf_counter() - started)


def retrain_outcome(result: dict[str, Any]) -> str:
    """What a finished retrain did, for its metrics: `unchanged` (no new ratings), `promoted` or `rejected`."""
    if result["decision"].get("no_new_ratings"):
        return "unchanged"
    return "promoted" if result["promoted"] else "rejected"


def _retrain(
    ctx: WorkerContext,
    job: Job | None,
    model: str | None,
    params: dict,
    ratings: Path | None,
    books: Path | None,
    force: bool,
    seed: int,
) -> dict[str, Any]:
    """`run_retrain`'s work."""
    job_id = job.id if job is not None else f"local-{time.time():.0f}"
    _lock(ctx).hold(job_id)  # the producer took it at enqueue time; a job enqueued by hand takes it here
    try:
        progress = _Progress(ctx, job, job_id)
        progress.check_cancel()  # cancelled while RQ handed it to this trainer
        production = servable_production(ctx.store)
        if production is None and ctx.store.production() is not None:
            logger.warning(
                "retrain %s: production %s's directory is missing; the candidate has nothing to be compared with",
                job_id,
                ctx.store.production(),
            )
        kind = payloads.model_kind(model)
        if books is not None:
            read_books(books)  # a books file that is missing or unreadable fails here, naming it, before any training
        data, sha256 = _training_ratings(ctx, ratings, progress.stage)
        request = TrainRequest(
            ratings=data,
            books=books,
            kind=kind,
            params=params,
            seed=seed,
            memory_mb=ctx.settings.train_memory_mb,
        )
        unchanged = None if force else gate.no_new_ratings(ctx.store, production, sha256)
        if unchanged:
            logger.info("retrain %s: %s", job_id, unchanged)
            return _untrained_result(ctx, production, kind, unchanged)
        judge_with = gate.Gate(production, ctx.settings.gate_tolerance, force)
        with training.stop_check(progress.check_cancel):
            result = train_version(
                ctx.store, request, on_epoch=progress.epoch, on_stage=progress.stage, judge_with=judge_with
            )
        decision = {k: v for k, v in result["decision"].items() if k != "production_metrics"}
        metrics.gate_judged(decision["metric"], decision["candidate"], decision["production"])
        progress.stage("promote" if decision["promote"] else "rejected")
        refresh_job = None
        if decision["promote"]:
            try:
                event = promote(
                    ctx.store,
                    ctx.client,
                    ctx.keys,
                    result["version"],
                    reason=f"retrain {job_id}",
                    refresh=ctx.settings,
                    force=force,
                )
                refresh_job = event["refresh_job"]
            except CatalogueMismatch as exc:
                decision.update(promote=False, reason=str(exc))
        if not decision["promote"]:
            ctx.store.record_decision(result["version"], REJECTED, decision["reason"])
        deleted = ctx.store.retain(ctx.settings.keep_versions, ctx.settings.keep_production)
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


def _training_ratings(
    ctx: WorkerContext, ratings: Path | None, stage: Callable[[str], None]
) -> tuple[Path | RatingsData, str]:
    """What the retrain trains on and its sha256 (for the no-new-ratings check): the named ratings file, read later
    by the pipeline, or one snapshot of the ratings store, read now (in the `read` stage)."""
    if ratings is not None:
        return ratings, fingerprint(ratings)["sha256"]
    stage("read")
    data = read_store(ctx.settings.database_url)
    return data, data.rows_sha256


def _untrained_result(ctx: WorkerContext, production: str, kind: str, reason: str) -> dict[str, Any]:
    """The result of a retrain with no new ratings: the same fields as a trained one, nothing trained or promoted."""
    decision = {
        "promote": False,
        "metric": None,
        "candidate": None,
        "production": None,
        "tolerance": ctx.settings.gate_tolerance,
        "reason": reason,
        "no_new_ratings": True,
        "test_rows": None,
        "test_rows_unseen_by_production": None,
    }
    return {
        "version": None,
        "model": kind,
        "metrics": None,
        "baselines": None,
        "production": {"version": production, "metrics": None},
        "decision": decision,
        "promoted": False,
        "refresh_job": None,
        "deleted_versions": [],
        "seconds": 0.0,
    }
