"""ModelRuntime: what a worker caches for each user, checked against the data files and the version's artifacts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bookrec.model_store.store import ModelStore
from bookrec.worker.learn import artifacts
from bookrec.worker.serve.runtime import ModelRuntime


@pytest.fixture(scope="module")
def runtime(trained) -> ModelRuntime:
    return ModelRuntime.load(ModelStore(trained.store), trained.version)


@pytest.fixture(scope="module")
def ratings(trained) -> pd.DataFrame:
    return pd.read_csv(trained.data_dir / "ratings.csv", dtype={"user_id": str, "book_id": str})


def entries(runtime: ModelRuntime, user_ids: list[str], n: int) -> list[dict]:
    return [json.loads(text) for text in runtime.recommend(user_ids, n).entries]


def test_items_carry_the_books_file_metadata(runtime: ModelRuntime, trained) -> None:
    books = pd.read_csv(trained.data_dir / "books.csv").set_index("book_id")

    items = entries(runtime, ["2"], 10)[0]["items"]

    for item in items:
        row = books.loc[item["book_id"]]
        year = None if pd.isna(row["original_publication_year"]) else int(row["original_publication_year"])
        image = None if pd.isna(row["image_url"]) else row["image_url"]
        assert (item["title"], item["authors"], item["year"], item["image_url"]) == (
            row["title"],
            row["authors"],
            year,
            image,
        )


def test_unknown_user_gets_the_most_popular_books(runtime: ModelRuntime, trained, ratings: pd.DataFrame) -> None:
    version_dir = trained.store / trained.version
    popularity = np.load(version_dir / artifacts.POPULARITY)
    catalog = json.loads((version_dir / artifacts.CATALOG).read_text())
    expected = [catalog[i]["book_id"] for i in np.argsort(-popularity, kind="stable")[:10]]
    ratings_per_book = ratings["book_id"].value_counts()

    entry = entries(runtime, ["someone-new"], 10)[0]

    assert entry["user_id"] == "someone-new"
    assert entry["fallback"] == "popular"
    assert [str(item["book_id"]) for item in entry["items"]] == [str(b) for b in expected]
    for item in entry["items"]:  # scores are training-rating counts: at most the book's count in the file
        assert 0 < item["score"] <= ratings_per_book[str(item["book_id"])]


def test_a_mixed_batch_keeps_request_order_and_counts_fallbacks(runtime: ModelRuntime, trained) -> None:
    batch = runtime.recommend(["3", "new-a", "4", "new-b"], 3)

    assert batch.user_ids == ["3", "new-a", "4", "new-b"]
    decoded = [json.loads(e) for e in batch.entries]
    assert [e["user_id"] for e in decoded] == [3, "new-a", 4, "new-b"]  # canonical integer ids become JSON numbers
    assert [e["fallback"] for e in decoded] == [None, "popular", None, "popular"]
    assert {(e["model_version"], e["n"], len(e["items"])) for e in decoded} == {(trained.version, 3, 3)}
    assert batch.fallbacks == 2
