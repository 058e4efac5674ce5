"""`ease`: the closed form solved exactly, l2 chosen on validation (or fixed), the pruned matrix served sparse,
and the planted tastes learnt; scored through the SavedModel's own signatures, as workers score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bookrec.model_store.store import ModelStore
from bookrec.worker.learn import export, training
from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.datasets import read_ratings
from bookrec.worker.learn.models import ease, get_spec
from bookrec.worker.learn.pipeline import TrainRequest, make_split, train_version
from tests.conftest import planted_tastes
from tests.unit.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Interactions:
    """The training part of a per-user 75/25 split of the planted-tastes catalogue."""
    ratings = planted_tastes(tmp_path_factory.mktemp("planted") / "ratings.csv")
    return make_split(TrainRequest(ratings=ratings), read_ratings(ratings), None).train


def reader_rows(train: Interactions, weighted: bool = True) -> np.ndarray:
    """The users x books matrix of the training ratings: their stars, or 1 for each when not `weighted`."""
    rows = np.zeros((train.n_users, train.n_items))
    rows[train.users, train.items] = train.ratings if weighted else 1.0
    return rows


def closed_form(train: Interactions, l2: float, weighted: bool = True) -> np.ndarray:
    """B = I - P / diag(P), P = (X^T X + l2 I)^-1, in float64 with numpy's general inverse."""
    x = reader_rows(train, weighted)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(train.n_items))
    return np.eye(train.n_items) - p / np.diag(p)


def saved(fitted: training.Trained, path: Path):
    """The fitted kind's SavedModel, written and loaded back."""
    export.save(export.serving_module(fitted.weights), path)
    return export.load(path)


@pytest.mark.parametrize("weighting", ["rating", "binary"])
def test_a_fixed_l2_gives_the_closed_form_through_both_signatures(
    train: Interactions, tmp_path: Path, weighting: str
) -> None:
    spec, weighted = get_spec("ease"), weighting == "rating"
    assert len(np.unique(train.ratings)) > 1, "the planted ratings must tell the weightings apart"
    fitted = training.fit(spec, train, spec.params({"l2": 30.0, "weighting": weighting}), seed=0)
    expected = reader_rows(train, weighted)[:8] @ closed_form(train, 30.0, weighted)
    module = saved(fitted, tmp_path / "model")

    by_index = module.top_k(user=np.arange(8, dtype=np.int32), k=np.int32(train.n_items))
    rows, items, ratings = train.by_user().rated_rows(np.arange(8))
    by_books = module.recommend_history(
        history_item=items.astype(np.int32),
        history_row=rows.astype(np.int32),
        history_rating=ratings,
        n_readers=np.int32(8),
        k=np.int32(train.n_items),
    )

    assert fitted.params["l2"] == 30.0 and fitted.history == {}
    for result in (by_index, by_books):
        got = np.take_along_axis(expected, result["items"].numpy(), axis=1)
        finite = np.isfinite(result["scores"].numpy())
        np.testing.assert_allclose(result["scores"].numpy()[finite], got[finite], rtol=0, atol=1e-4)
    own = np.zeros((8, train.n_items), bool)
    own[rows, items] = True
    assert not np.take_along_axis(own, by_books["items"].numpy(), axis=1)[np.isfinite(by_books["scores"].numpy())].any()


def test_l2_is_chosen_on_validation_and_every_tried_value_is_recorded(tmp_path: Path) -> None:
    ratings = planted_tastes(tmp_path / "ratings.csv")

    request = TrainRequest(ratings=ratings, kind="ease", params={"weighting": "rating"})
    result = train_version(ModelStore(tmp_path / "store"), request)

    metadata = json.loads(next((tmp_path / "store").glob("v*/metadata.json")).read_text())
    tried = metadata["history"]
    scores = dict(zip(tried["l2"], tried["validation_ndcg@10"]))
    train = make_split(TrainRequest(ratings=ratings), read_ratings(ratings), None).train
    scale = float(np.mean(np.square(train.ratings)))  # the grid is for stars as large as the data's
    assert all(any(np.isclose(scale * l2, v) for v in scores) for l2 in ease.L2_GRID), "the coarse grid was not tried"
    assert len(scores) == len(ease.L2_GRID) + 1, "one refinement beside the coarse best"
    assert metadata["params"]["l2"] == max(scores, key=scores.get)
    assert result["metrics"]["ndcg@10"] > 1.5 * result["baselines"]["popularity"]["ndcg@10"]
    assert result["metrics"]["recall@10"] > result["baselines"]["popularity"]["recall@10"]


def test_above_dense_max_each_column_keeps_its_largest_entries_and_is_served_sparse(
    train: Interactions, tmp_path: Path
) -> None:
    spec, keep = get_spec("ease"), 12
    dense = closed_form(train, 30.0)
    pruned = np.zeros_like(dense)
    for column in range(train.n_items):
        best = np.argsort(-np.abs(dense[:, column]))[:keep]
        pruned[best, column] = dense[best, column]
    np.fill_diagonal(pruned, 0.0)

    params = {"l2": 30.0, "weighting": "rating", "keep": keep, "dense_max": 10}
    fitted = training.fit(spec, train, spec.params(params), seed=0)
    module = saved(fitted, tmp_path / "model")
    readers = np.array([0, 3, 5], dtype=np.int32)
    rows, items, ratings = train.by_user().rated_rows(readers)
    result = module.recommend_history(
        history_item=items.astype(np.int32),
        history_row=rows.astype(np.int32),
        history_rating=ratings,
        n_readers=np.int32(3),
        k=np.int32(train.n_items),
    )

    assert fitted.weights.dense is None
    assert np.diff(fitted.weights.row_splits).sum() == np.count_nonzero(pruned)
    expected = reader_rows(train)[readers] @ pruned
    finite = np.isfinite(result["scores"].numpy())
    got = np.take_along_axis(expected, result["items"].numpy(), axis=1)
    np.testing.assert_allclose(result["scores"].numpy()[finite], got[finite], rtol=0, atol=1e-4)
    np.testing.assert_allclose(fitted.model(reader_rows(train)[readers]), expected, rtol=0, atol=1e-4)


def test_train_params_fix_l2_and_skip_the_search(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    ratings = planted_tastes(tmp_path / "ratings.csv")
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "store"))

    code, out, err = run_cli(
        ["train", "--ratings", str(ratings), "--model", "ease", "--params", '{"l2": 30}', "--json"], capsys
    )

    assert code == 0, err
    metadata = ModelStore(tmp_path / "store").metadata(json.loads(out)["version"])
    assert metadata["kind"] == "ease" and metadata["params"]["l2"] == 30.0 and metadata["history"] == {}
