"""The default ranking model learns planted tastes that popularity cannot see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.payloads import DEFAULT_MODEL_KIND
from bookrec.worker.learn.pipeline import TrainRequest, train_version


def planted_tastes(
    path: Path, users: int = 600, items: int = 240, groups: int = 6, per_user: int = 24, seed: int = 0
) -> Path:
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


@pytest.mark.slow
def test_the_default_ranking_model_beats_popularity_on_planted_tastes(tmp_path: Path) -> None:
    ratings = planted_tastes(tmp_path / "ratings.csv")

    result = train_version(
        ModelStore(tmp_path / "store"), TrainRequest(ratings=ratings, split="per-user", test_frac=0.25)
    )

    popularity = result["baselines"]["popularity"]
    assert result["model"] == DEFAULT_MODEL_KIND
    assert result["metrics"]["ndcg@10"] > 1.2 * popularity["ndcg@10"]
    assert result["metrics"]["recall@10"] > popularity["recall@10"]
