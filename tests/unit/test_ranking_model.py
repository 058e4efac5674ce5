"""The default ranking model learns planted tastes that popularity cannot see: planted taste groups, and the
authors and series synthetic readers of real books follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.payloads import DEFAULT_MODEL_KIND
from bookrec.worker.learn import artifacts, export
from bookrec.worker.learn.book_traits import traits
from bookrec.worker.learn.datasets import read_book_table
from bookrec.worker.learn.inputs import PRESETS
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from bookrec.worker.learn.synth import synthesise_readers
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


@pytest.mark.slow
def test_a_reader_of_three_books_by_an_author_or_of_a_series_start_gets_more_of_it(tmp_path: Path) -> None:
    """Trained on synthetic readers of real books, the default model gives a new reader who rated three books by one
    author (or the first two of a series) more of that author (that series) than popularity would, through the
    SavedModel's `recommend_history` as workers score a current history."""
    data = synthesise_readers(tmp_path / "data", **PRESETS["small"], seed=0)
    store = ModelStore(tmp_path / "store")
    version = train_version(store, TrainRequest(ratings=Path(data["ratings_path"]), books=Path(data["books_path"])))
    items = store.metadata(version["version"])["id_maps"]["items"]
    module = export.load(store.root / version["version"] / artifacts.SAVED_MODEL)
    popular = np.argsort(-np.load(store.root / version["version"] / artifacts.POPULARITY), kind="stable")
    table = read_book_table(data["books_path"])
    books = table.join(traits(table)).assign(count=table["ratings_count"].astype(int))
    books = books[books["book_id"].isin(items)].assign(index=lambda b: b["book_id"].map(items.index))

    def top10(history: list[int]) -> tuple[set[int], set[int]]:
        """The model's top 10 for a reader of `history`, and popularity's without those books."""
        out = module.recommend_history(
            history_item=np.array(history, np.int32),
            history_row=np.zeros(len(history), np.int32),
            history_rating=np.full(len(history), 5.0, np.float32),
            n_readers=np.int32(1),
            k=np.int32(10),
        )
        return set(out["items"].numpy()[0].tolist()), set([i for i in popular if i not in history][:10])

    for trait, read, order in (("author", 3, "count"), ("series", 2, "number")):
        groups = [g.sort_values(order, ascending=order == "number") for _, g in books.groupby(trait) if len(g) >= 5]
        model_hits, popular_hits = [], []
        for group in groups:
            history, rest = group["index"][:read].tolist(), set(group["index"][read:])
            model, popularity = top10(history)
            model_hits.append(len(model & rest))
            popular_hits.append(len(popularity & rest))
        assert len(groups) >= 10, (trait, len(groups))
        assert np.mean(model_hits) >= 1.5 and np.mean(model_hits) > 3 * np.mean(popular_hits), (
            trait,
            model_hits,
            popular_hits,
        )
