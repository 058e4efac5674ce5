"""The retrain gate: the candidate goes to production only if it is no worse than production on the same split.

Production is evaluated afresh on the candidate's held-out split through its own SavedModel,
with ids translated between the two versions' index spaces, so the comparison is fair even
when the data changed between versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bookrec.model_store.store import ModelStore
from bookrec.worker.learn import artifacts, export
from bookrec.worker.learn.data import IdMap, UserItems
from bookrec.worker.learn.evaluation import BiasBaseline, Popularity, evaluate
from bookrec.worker.learn.scoring import SavedModelScorer

LOWER_IS_BETTER = {"rmse", "mae"}


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


def judge(store: ModelStore, gate: Gate, split, metric: str, candidate: dict[str, Any]) -> dict[str, Any]:
    """The gate's whole verdict on a candidate with `candidate` metrics on `split`: production evaluated on the
    same split, then `decide`; the decision with production's metrics as `production_metrics`."""
    production = production_metrics(store, gate.production, split) if gate.production else None
    return {**decide(metric, candidate, production, gate.tolerance, gate.force), "production_metrics": production}


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
