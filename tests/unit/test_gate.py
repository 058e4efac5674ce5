"""The retrain gate: decisions, and production evaluated fairly on the candidate's split."""

from __future__ import annotations

import pytest

from bookrec.model_store.store import ModelStore
from bookrec.worker.learn.data import IdMap, Interactions
from bookrec.worker.learn.datasets import read_ratings
from bookrec.worker.learn.gate import decide, production_metrics
from bookrec.worker.learn.pipeline import Split, TrainRequest, make_split
from tests.conftest import TrainedStore


def test_a_candidate_worse_on_ndcg_is_rejected_and_no_worse_is_promoted() -> None:
    assert decide("ndcg@10", {"ndcg@10": 0.30}, {"ndcg@10": 0.31}, 0.0, force=False)["promote"] is False
    assert decide("ndcg@10", {"ndcg@10": 0.31}, {"ndcg@10": 0.31}, 0.0, force=False)["promote"] is True
    assert decide("ndcg@10", {"ndcg@10": 0.30}, {"ndcg@10": 0.31}, 0.02, force=False)["promote"] is True


def test_rmse_is_better_when_lower() -> None:
    assert decide("rmse", {"rmse": 0.90}, {"rmse": 0.85}, 0.0, force=False)["promote"] is False
    assert decide("rmse", {"rmse": 0.84}, {"rmse": 0.85}, 0.0, force=False)["promote"] is True


def test_force_and_an_empty_production_promote_and_say_why() -> None:
    forced = decide("rmse", {"rmse": 2.0}, {"rmse": 0.8}, 0.0, force=True)
    first = decide("rmse", {"rmse": 2.0}, None, 0.0, force=False)

    assert forced["promote"] and "forced" in forced["reason"]
    assert first["promote"] and "no model in production" in first["reason"]


def test_production_on_a_reindexed_copy_of_its_own_split_scores_its_own_metrics(trained: TrainedStore) -> None:
    store = ModelStore(trained.store)
    stored = store.metadata(trained.version)["metrics"]
    request = TrainRequest(ratings=trained.data_dir / "ratings.csv")
    split = make_split(request, read_ratings(request.ratings), None)
    # The same data with the id maps in reverse order: every index differs from the version's own.
    users = IdMap.from_list(list(reversed(split.user_map.to_list())))
    items = IdMap.from_list(list(reversed(split.item_map.to_list())))
    reindexed = Split(
        split.train_frame,
        split.test_frame,
        users,
        items,
        Interactions.from_frame(split.train_frame, users, items),
        Interactions.from_frame(split.test_frame, users, items),
    )

    metrics = production_metrics(store, trained.version, reindexed)

    for name in ("ndcg@10", "recall@10", "precision@10", "map@10", "rmse"):
        assert metrics[name] == pytest.approx(stored[name], abs=1e-6), name
