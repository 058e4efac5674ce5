"""The retrain gate: the candidate goes to production only if it is no worse than production, like with like,
on ratings neither of them trained on.

Fair test rows: every version records the (user, item) pairs it trained on (artifacts.TRAINED_PAIRS).
The candidate's split keeps every rating production trained on in the candidate's train part, so its
test part holds only ratings production never saw (production's own held-out rows and ratings newer
than production) and that the candidate did not train on either. Production is evaluated afresh on
that test part through its own SavedModel, with ids translated between the two versions' index spaces.

Like with like: the metric is the candidate's kind's (rmse for rating kinds, ndcg@10 for ranking kinds)
when both are of the same task; a candidate of another task than production is judged on ndcg@10,
the ranking readers see.

No new ratings: a ratings file with the sha256 production was trained on is not retrained on, nor a ratings store
snapshot whose sorted rows have the sha256 of the snapshot production was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bookrec.model_store.store import LOWER_IS_BETTER, ModelStore
from bookrec.worker.learn import artifacts, export
from bookrec.worker.learn.data import IdMap, UserItems
from bookrec.worker.learn.evaluation import BiasBaseline, Popularity, evaluate
from bookrec.worker.learn.evaluation.splits import pair_keys
from bookrec.worker.learn.models import ModelSpec
from bookrec.worker.learn.scoring import SavedModelScorer

CROSS_TASK_METRIC = "ndcg@10"
"""What a candidate of another task than production's is judged on: the top-N lists readers see."""


class RemappedScorer:
    """Another version's SavedModel, scoring in the candidate's index space."""

    def __init__(
        self,
        module,
        their_users: IdMap,
        their_items: IdMap,
        our_users: IdMap,
        our_items: IdMap,
        fallback_rating,
        fallback_rank,
    ) -> None:
        self.scorer = SavedModelScorer(module, fallback_rating)
        self.fallback_rank = fallback_rank
        self.user_to_theirs = their_users.index(our_users.ids)
        self.item_to_theirs = their_items.index(our_items.ids)
        self.item_to_ours = np.append(our_items.index(their_items.ids), -1).astype(np.int32)  # index -1 maps to -1

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Their rating for each of our (user, item) pairs; pairs they do not know get the fallback's."""
        theirs_u = np.where(users >= 0, self.user_to_theirs[np.maximum(users, 0)], -1)
        theirs_i = np.where(items >= 0, self.item_to_theirs[np.maximum(items, 0)], -1)
        out = np.asarray(self.scorer.fallback.predict(users, items), dtype=np.float32).copy()
        known = (theirs_u >= 0) & (theirs_i >= 0)
        if known.any():
            out[known] = self.scorer.predict(theirs_u[known], theirs_i[known])
        return out

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        """Their top-k for our users, in our item indices; users they do not know are ranked by popularity."""
        theirs_u = self.user_to_theirs[users]
        top = np.asarray(self.fallback_rank.top_k(users, k, exclude), dtype=np.int32)
        known = np.flatnonzero(theirs_u >= 0)
        if len(known):
            rows, items = exclude.rows(users[known])
            mapped = self.item_to_theirs[items]
            keep = mapped >= 0
            their_top = self.scorer.top_k_excluding(theirs_u[known], k, rows[keep], mapped[keep])
            top[known] = self.item_to_ours[their_top]
        return top


def production_metrics(store: ModelStore, version: str, split) -> dict[str, Any]:
    """Metrics of stored `version` on the candidate's `split` (a bookrec.worker.learn.pipeline.Split)."""
    path = store.verify(version)
    metadata = store.metadata(version)
    module = export.load(path / artifacts.SAVED_MODEL)
    scorer = RemappedScorer(
        module,
        IdMap.from_list(metadata["id_maps"]["users"]),
        IdMap.from_list(metadata["id_maps"]["items"]),
        split.user_map,
        split.item_map,
        BiasBaseline(split.train),
        Popularity(split.train),
    )
    return evaluate(scorer, split.train, split.test, test_user_ids=split.test_frame["user"].to_numpy())


@dataclass(frozen=True)
class Gate:
    """What a candidate is judged against: the production version (None if there is none yet), the tolerance, and `force`."""

    production: str | None
    tolerance: float
    force: bool = False


def trained_by_production(store: ModelStore, gate: Gate | None, frame: pd.DataFrame) -> np.ndarray | None:
    """Which rows of a ratings frame production trained on (a boolean mask), or None when there is no production
    or it predates the record of trained pairs (the candidate's split is then drawn as for a first version)."""
    if gate is None or gate.production is None:
        return None
    trained = artifacts.read_trained_pairs(store.verify(gate.production))
    return None if trained is None else np.isin(pair_keys(frame), trained)


def no_new_ratings(store: ModelStore, production: str | None, ratings_sha256: str) -> str | None:
    """Why there is nothing to retrain on (the ratings file production was trained on, byte for byte, or a store
    snapshot holding exactly the rows production's did), or None."""
    if production is None:
        return None
    recorded = store.metadata(production).get("data_fingerprint", {}).get("ratings", {})
    if recorded.get("sha256") != ratings_sha256:
        return None
    what = "the ratings store holds the ratings" if recorded.get("store") else "the ratings file is the one"
    return (
        f"no new ratings since production {production}: {what} it was trained on "
        f"(sha256 {ratings_sha256[:12]}…, {recorded.get('rows')} rows); nothing was trained (force trains and promotes)"
    )


def gate_metric(spec: ModelSpec, production_task: str | None) -> str:
    """The metric a candidate of `spec` is judged on against a production of `production_task` (None: none yet)."""
    return spec.gate_metric if production_task in (None, spec.task) else CROSS_TASK_METRIC


def judge(
    store: ModelStore, gate: Gate, split, spec: ModelSpec, candidate: dict[str, Any], fair: bool
) -> dict[str, Any]:
    """The gate's whole verdict on a candidate of `spec` with `candidate` metrics on `split`: production evaluated
    on the same split and the metric chosen like with like, then `decide`. `fair` says the split's test rows are
    ones production never trained on. The decision carries production's metrics as `production_metrics`."""
    production, task = None, None
    if gate.production:
        task = store.metadata(gate.production).get("task")
        production = production_metrics(store, gate.production, split)
    metric = gate_metric(spec, task)
    decision = decide(metric, candidate, production, gate.tolerance, gate.force)
    if metric != spec.gate_metric:
        decision["reason"] += f"; a {spec.task} candidate against a {task} production is judged on {metric}"
    return {
        **decision,
        "no_new_ratings": False,
        "test_rows": len(split.test),
        "test_rows_unseen_by_production": fair if gate.production else None,
        "production_metrics": production,
    }


def decide(
    metric: str, candidate: dict[str, Any], production: dict[str, Any] | None, tolerance: float, force: bool
) -> dict[str, Any]:
    """Whether to promote: {"promote", "metric", "candidate", "production", "tolerance", "reason"}."""
    ours = candidate.get(metric)
    theirs = production.get(metric) if production else None
    decision = {"metric": metric, "candidate": ours, "production": theirs, "tolerance": tolerance}
    if force:
        return {**decision, "promote": True, "reason": "forced: the gate was skipped"}
    if production is None:
        return {**decision, "promote": True, "reason": "no model in production yet"}
    if metric in LOWER_IS_BETTER:
        passed = ours <= theirs + tolerance
    else:
        passed = ours >= theirs - tolerance
    verdict = "no worse than" if passed else "worse than"
    return {
        **decision,
        "promote": passed,
        "reason": f"candidate {metric} {ours:.4f} is {verdict} production's {theirs:.4f} (tolerance {tolerance})",
    }
