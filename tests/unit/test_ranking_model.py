"""The default ranking model learns planted tastes that popularity cannot see."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.payloads import DEFAULT_MODEL_KIND
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from tests.conftest import planted_tastes


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
