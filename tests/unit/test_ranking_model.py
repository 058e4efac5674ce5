"""The default ranking model learns planted tastes that popularity cannot see, solves EASE exactly, and repeats itself.

Its SavedModel round trip (plain `tf.saved_model.load`, signatures against the live model within
1e-5) is tested for every kind, the default included, in test_serving.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.store import ModelStore
from shared.datasets import read_ratings
from shared.payloads import DEFAULT_MODEL_KIND
from worker import training
from worker.data import Interactions
from worker.models import get_spec
from worker.pipeline import TrainRequest, make_split, train_version


def planted_tastes(path: Path, users: int = 600, items: int = 240, groups: int = 6, per_user: int = 24, seed: int = 0) -> Path:
    """Readers in `groups` taste groups, each rating mostly books of its own group, with a popular head shared by all."""
    rng = np.random.default_rng(seed)
    group_of_item = np.arange(items) % groups
    popularity = 1.0 / np.arange(1, items + 1) ** 0.5
    rows = []
    for user in range(users):
        taste = user % groups
        weights = popularity * np.where(group_of_item == taste, 8.0, 1.0)
        chosen = rng.choice(items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [(user, int(item), int(rng.integers(3, 6))) for item in chosen]
    pd.DataFrame(rows, columns=["user_id", "book_id", "rating"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Interactions:
    """The training part of a per-user 75/25 split of the planted-tastes catalogue."""
    ratings = planted_tastes(tmp_path_factory.mktemp("planted") / "ratings.csv")
    request = TrainRequest(ratings=ratings, split="per-user", test_frac=0.25)
    return make_split(request, read_ratings(ratings), None).train


def multi_hot(train: Interactions) -> np.ndarray:
    """The users x books 0/1 matrix of the training ratings."""
    rows = np.zeros((train.n_users, train.n_items))
    rows[train.users, train.items] = 1.0
    return rows


def test_the_default_ranking_model_beats_popularity_on_planted_tastes(tmp_path: Path) -> None:
    ratings = planted_tastes(tmp_path / "ratings.csv")

    result = train_version(ModelStore(tmp_path / "store"), TrainRequest(ratings=ratings, split="per-user", test_frac=0.25))

    popularity = result["baselines"]["popularity"]
    assert result["model"] == DEFAULT_MODEL_KIND
    assert result["metrics"]["ndcg@10"] > 1.5 * popularity["ndcg@10"]
    assert result["metrics"]["recall@10"] > popularity["recall@10"]


def test_ease_serves_the_closed_form_scores_of_unrated_books_when_its_rank_covers_the_catalogue(train: Interactions) -> None:
    spec, l2 = get_spec("ease"), 50.0
    x = multi_hot(train)
    inverse = np.linalg.inv(x.T @ x + l2 * np.eye(train.n_items))
    weights = np.eye(train.n_items) - inverse / np.diag(inverse)  # B = I - P diag(1 / diag(P)): zero diagonal

    served = training.fit(spec, train, spec.params({"dim": train.n_items, "l2": l2}), seed=0).weights
    scores = served.user_vectors @ served.item_vectors.T + served.item_bias

    unrated = x == 0
    np.testing.assert_allclose(scores[unrated], (x @ weights)[unrated], rtol=0, atol=1e-4)


def test_the_default_ranking_model_is_the_same_for_the_same_seed(train: Interactions) -> None:
    spec = get_spec(DEFAULT_MODEL_KIND)

    first, second = (training.fit(spec, train, spec.params({"dim": 16}), seed=3).weights for _ in range(2))

    np.testing.assert_array_equal(first.user_vectors, second.user_vectors)
    np.testing.assert_array_equal(first.item_vectors, second.item_vectors)
    np.testing.assert_array_equal(first.item_bias, second.item_bias)
