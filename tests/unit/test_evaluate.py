"""evaluate(): every test row and user counted, hand-checked metrics, fallbacks, and the MovieLens anchors."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import IdMap, Interactions, UserItems
from bookrec.worker.learn.evaluation.baselines import BiasBaseline, GlobalMean, Popularity
from bookrec.worker.learn.evaluation.evaluate import evaluate, evaluate_with_baselines
from bookrec.worker.learn.evaluation.splits import split_ratings

MOVIELENS = Path("/work/shared/data/movielens/ml-latest-small/ratings.csv")


def frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user", "item", "rating"]).astype({"rating": "float32"})


def index(train: pd.DataFrame, test: pd.DataFrame) -> tuple[Interactions, Interactions]:
    """Both frames indexed with maps built from train alone."""
    users, items = IdMap.from_ids(train["user"]), IdMap.from_ids(train["item"])
    return Interactions.from_frame(train, users, items), Interactions.from_frame(test, users, items)


# train maps users a, b, c -> 0, 1, 2 and items x, y, z -> 0, 1, 2; mean = (4 + 3 + 5 + 2 + 4) / 5 = 3.6
TRAIN = frame([("a", "x", 4), ("a", "y", 3), ("b", "x", 5), ("b", "z", 2), ("c", "y", 4)])
# w is an unknown item, d and e are unknown users
TEST = frame([("a", "z", 3), ("a", "w", 5), ("b", "y", 4), ("d", "x", 2), ("e", "y", 1), ("e", "w", 2)])


def test_unknown_users_and_items_are_counted_not_dropped():
    train, test = index(TRAIN, TEST)
    metrics = evaluate(GlobalMean(train), train, test, k=2, test_user_ids=TEST["user"].to_numpy())
    assert metrics["test_rows"] == 6
    assert (metrics["unknown_user_rows"], metrics["unknown_item_rows"]) == (3, 2)
    assert (metrics["test_users"], metrics["unknown_users"]) == (4, 2)
    # every row predicted 3.6; errors -0.6, 1.4, 0.4, -1.6, -2.6, -1.6
    assert metrics["rmse"] == pytest.approx(math.sqrt((0.36 + 1.96 + 0.16 + 2.56 + 6.76 + 2.56) / 6))
    assert metrics["mae"] == pytest.approx(8.2 / 6)


def test_ranking_excludes_train_items_and_ranks_unknown_users_by_popularity():
    train, test = index(TRAIN, TEST)
    metrics = evaluate(GlobalMean(train), train, test, k=2, test_user_ids=TEST["user"].to_numpy())
    # a: candidates {z} -> [z, -1], relevant {z, w(unknown)}: P 1/2, R 1/2, NDCG 1/(1 + 1/log2 3), AP 1/2
    # b: candidates {y} -> [y, -1], relevant {y}:             P 1/2, R 1,   NDCG 1,                AP 1
    # d: popularity (x: 2, y: 2, z: 1; tie -> x) -> [x, y], relevant {x}: P 1/2, R 1, NDCG 1, AP 1
    # e: [x, y], relevant {y, w(unknown)}: P 1/2, R 1/2, NDCG (1/log2 3)/(1 + 1/log2 3), AP (1/2)/2
    assert metrics["precision@2"] == pytest.approx(0.5)
    assert metrics["recall@2"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
    ideal = 1 + 1 / math.log2(3)
    assert metrics["ndcg@2"] == pytest.approx((1 / ideal + 1 + 1 + (1 / math.log2(3)) / ideal) / 4)
    assert metrics["map@2"] == pytest.approx((0.5 + 1 + 1 + 0.25) / 4)
    assert metrics["coverage@2"] == pytest.approx(1.0)  # x, y, z all recommended


class Recording:
    """A scorer that predicts 3 and recommends item 0 first, remembering which users it ranked."""

    def __init__(self) -> None:
        self.ranked: list[int] = []

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(len(users), 3.0, dtype=np.float32)

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        self.ranked.extend(users.tolist())
        return np.tile(np.arange(k, dtype=np.int32), (len(users), 1))


def test_scorer_ranks_known_users_and_the_fallback_ranks_unknown_ones():
    train, test = index(TRAIN, TEST)
    model, fallback = Recording(), Recording()
    evaluate(model, train, test, k=1, fallback=fallback, test_user_ids=TEST["user"].to_numpy())
    assert sorted(model.ranked) == [0, 1]  # a and b
    assert fallback.ranked == [-1, -1]  # d and e


def test_progress_reports_every_batch_up_to_the_total():
    train, test = index(TRAIN, TEST)
    calls = []
    ids = TEST["user"].to_numpy()
    popularity = Popularity(train)
    evaluate(popularity, train, test, k=2, batch_size=1, progress=lambda *call: calls.append(call), test_user_ids=ids)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_unknown_users_need_their_ids():
    train, test = index(TRAIN, TEST)
    with pytest.raises(ValidationError, match="test_user_ids"):
        evaluate(GlobalMean(train), train, test)


def test_a_scorer_without_a_fallback_for_unknown_ids_is_rejected():
    class NoFallback(Recording):
        def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
            return np.where((users < 0) | (items < 0), np.nan, 3.0).astype(np.float32)

    train, test = index(TRAIN, TEST)
    with pytest.raises(ValidationError, match="finite rating per test row"):
        evaluate(NoFallback(), train, test, test_user_ids=TEST["user"].to_numpy())


def test_test_indexed_with_other_maps_is_rejected():
    train, _ = index(TRAIN, TEST)
    _, other = index(TEST, TEST)
    with pytest.raises(ValidationError, match="different id maps"):
        evaluate(GlobalMean(train), train, other)


def test_evaluate_with_baselines_scores_model_and_baselines_on_one_split():
    train, test = index(TRAIN, TEST)
    ids = TEST["user"].to_numpy()
    model, baselines = evaluate_with_baselines(BiasBaseline(train), train, test, k=2, test_user_ids=ids)
    assert sorted(baselines) == ["bias", "global_mean", "popularity"]
    assert model == baselines["bias"]
    assert baselines["global_mean"] == evaluate(GlobalMean(train), train, test, k=2, test_user_ids=ids)


def movielens() -> pd.DataFrame:
    if not MOVIELENS.exists():
        pytest.skip(f"{MOVIELENS} is not on this machine")
    ratings = pd.read_csv(MOVIELENS, dtype={"userId": str, "movieId": str})
    ratings = ratings.rename(columns={"userId": "user", "movieId": "item"})
    return ratings[["user", "item", "rating"]].astype({"rating": "float32"})


def test_movielens_bias_baseline_rmse_matches_published_baselines():
    train_frame, test_frame = split_ratings(movielens(), "random", 0.2, seed=0)
    train, test = index(train_frame, test_frame)
    ids = test_frame["user"].to_numpy()
    bias = evaluate(BiasBaseline(train), train, test, test_user_ids=ids)
    assert 0.85 <= bias["rmse"] <= 0.89  # Surprise BaselineOnly: ~0.867-0.873
    assert bias["rmse"] < evaluate(GlobalMean(train), train, test, test_user_ids=ids)["rmse"]


def test_movielens_popularity_ndcg_per_user_split():
    train_frame, test_frame = split_ratings(movielens(), "per-user", 0.25, seed=0)
    train, test = index(train_frame, test_frame)
    popularity = evaluate(Popularity(train), train, test)
    assert 0.12 <= popularity["ndcg@10"] <= 0.30  # published: ~0.21
    assert popularity["test_users"] == 610
