"""Training a version end to end: metrics beside baselines, metadata, explicit test files, the train CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bookrec.cli import main
from bookrec.model_store.store import ModelStore
from bookrec.worker.learn.artifacts import SERVING_GRAPH
from bookrec.worker.learn.datasets import fingerprint
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from tests.conftest import TrainedStore, synth_small


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_small(tmp_path_factory.mktemp("data"), users=200, books=150, ratings=5000, seed=3)


def test_biased_mf_on_tiny_data_predicts_better_than_the_global_mean(data: Path, tmp_path: Path) -> None:
    result = train_version(
        ModelStore(tmp_path),
        TrainRequest(ratings=data / "ratings.csv", kind="biased-mf", split="random", test_frac=0.2),
    )

    assert result["metrics"]["rmse"] < result["baselines"]["global_mean"]["rmse"]
    assert set(result["baselines"]) == {"global_mean", "bias", "popularity"}


def test_the_default_ranking_model_ranks_better_than_the_global_mean(trained: TrainedStore) -> None:
    metadata = ModelStore(trained.store).metadata(trained.version)

    assert metadata["kind"] == "mult-dae" and metadata["gate_metric"] == "ndcg@10"
    assert metadata["metrics"]["ndcg@10"] > metadata["baselines"]["global_mean"]["ndcg@10"]


def test_metadata_records_the_serving_graphs_it_was_exported_with(trained: TrainedStore) -> None:
    metadata = ModelStore(trained.store).metadata(trained.version)

    assert metadata["serving_graph"] == SERVING_GRAPH  # what a benchmark checks before reusing it as its base


def test_metadata_records_what_a_version_was_trained_on(trained: TrainedStore) -> None:
    metadata = ModelStore(trained.store).metadata(trained.version)
    ratings = trained.data_dir / "ratings.csv"
    frame = pd.read_csv(ratings)

    assert metadata["data_fingerprint"]["ratings"]["sha256"] == fingerprint(ratings)["sha256"]
    assert metadata["data_fingerprint"]["ratings"]["rows"] == len(frame)
    assert metadata["data_fingerprint"]["train_rows"] + metadata["data_fingerprint"]["test_rows"] == len(frame)
    assert set(metadata["id_maps"]["users"]) == {str(u) for u in frame["user_id"].unique()}
    assert metadata["history"]["loss"] and len(metadata["history"]["loss"]) == metadata["training"]["epochs"]
    assert metadata["split"] == {"how": "per-user", "test_frac": 0.25, "seed": 0, "kept_in_train": None}
    for name in ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10"):
        assert name in metadata["metrics"] and all(name in b for b in metadata["baselines"].values())


def test_an_explicit_test_file_is_used_and_unknown_ids_are_counted_not_dropped(data: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(data / "ratings.csv").sample(frac=1.0, random_state=0)
    train, test = frame.iloc[:4000], frame.iloc[4000:].copy()
    test.loc[test.index[:5], "user_id"] = [999_990, 999_990, 999_991, 999_992, 999_993]  # readers the model never saw
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    unknown_user = ~test["user_id"].isin(train["user_id"])
    unknown_item = ~test["book_id"].isin(train["book_id"])

    result = train_version(
        ModelStore(tmp_path / "store"),
        TrainRequest(ratings=tmp_path / "train.csv", test=tmp_path / "test.csv", kind="mf", params={"epochs": 2}),
    )

    assert result["metrics"]["test_rows"] == len(test)
    assert result["metrics"]["unknown_user_rows"] == unknown_user.sum() >= 5
    assert result["metrics"]["unknown_users"] == test.loc[unknown_user, "user_id"].nunique()
    assert result["metrics"]["unknown_item_rows"] == unknown_item.sum()


def test_parent_is_the_production_version_at_training_time(data: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="mf", params={"epochs": 1}))["version"]
    store.set_production(first)
    second = train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="mf", params={"epochs": 1}))[
        "version"
    ]

    assert store.metadata(second)["parent"] == first


def test_train_cli_prints_one_json_object_with_metrics_and_baselines(
    data: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "store"))

    code = main(
        [
            "train",
            "--ratings",
            str(data / "ratings.csv"),
            "--books",
            str(data / "books.csv"),
            "--model",
            "mf",
            "--epochs",
            "2",
            "--json",
        ]
    )

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["model"] == "mf" and out["promoted"] is False
    assert set(out["baselines"]) == {"global_mean", "bias", "popularity"}
    assert ModelStore(tmp_path / "store").metadata(out["version"])["metrics"] == out["metrics"]


def test_train_cli_reports_a_missing_column_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "store"))
    (tmp_path / "r.csv").write_text("user_id,book_id,stars\n1,2,5\n")

    code = main(["train", "--ratings", str(tmp_path / "r.csv")])

    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "rating" in err and "stars" in err
    assert ModelStore(tmp_path / "store").list() == []


def movies_catalogue(root: Path) -> tuple[Path, Path]:
    """A movies-shaped catalogue written here (MovieLens' columns, made-up rows): ratings.csv keyed by userId and
    movieId, and movies.csv with movieId, title, genres (no authors)."""
    rng = np.random.default_rng(0)
    movies = [10 * m + 7 for m in range(12)]  # ids that are not 1..N
    rows = [
        (u, m, float(rng.integers(1, 11)) / 2, 1_000_000 + u)
        for u in range(1, 41)
        for m in rng.choice(movies, 6, replace=False)
    ]
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(root / "ratings.csv", index=False)
    titles = pd.DataFrame(
        {"movieId": movies, "title": [f"Film Number {m} ({1990 + m % 20})" for m in movies], "genres": "Drama"}
    )
    titles.to_csv(root / "movies.csv", index=False)
    return root / "ratings.csv", root / "movies.csv"


def test_train_on_a_movies_file_shows_its_titles(tmp_path: Path, monkeypatch, capsys) -> None:
    ratings, movies = movies_catalogue(tmp_path)
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "store"))

    code = main(
        ["train", "--ratings", str(ratings), "--books", str(movies), "--model", "mf", "--epochs", "1", "--json"]
    )

    assert code == 0, capsys.readouterr().err
    version = json.loads(capsys.readouterr().out)["version"]
    catalog = json.loads((tmp_path / "store" / version / "catalog.json").read_text())
    assert len(catalog) == 12
    assert all(
        book["title"] == f"Film Number {book['book_id']} ({1990 + int(book['book_id']) % 20})" for book in catalog
    )
    assert {book["authors"] for book in catalog} == {None}


def test_train_names_the_books_file_s_title_column_and_refuses_one_it_lacks(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    ratings, movies = movies_catalogue(tmp_path)
    pd.read_csv(movies).rename(columns={"title": "label"}).to_csv(movies, index=False)
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "store"))
    args = ["train", "--ratings", str(ratings), "--books", str(movies), "--model", "mf", "--epochs", "1", "--json"]

    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"bookrec: error: {movies}: missing column(s) title (")
    assert main([*args, "--title-col", "label"]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    assert json.loads((tmp_path / "store" / version / "catalog.json").read_text())[0]["title"].startswith("Film Number")
