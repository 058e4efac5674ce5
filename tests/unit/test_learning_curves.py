"""What a version records of its training (`learning_curve`: what its kind optimises, per step or epoch, on training
and held-out data) and what `bookrec models show V --plot` draws from it: that curve, and the metrics the kind is
judged on beside their baselines, in a PNG everyone can read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bookrec.cli import main
from bookrec.model_store.store import ModelStore
from bookrec.plot import figure
from bookrec.worker.learn import training
from bookrec.worker.learn.datasets import read_ratings
from bookrec.worker.learn.models import get_spec
from bookrec.worker.learn.pipeline import TrainRequest, make_split, train_version
from tests.conftest import TrainedStore, synth_small


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_small(tmp_path_factory.mktemp("data"), users=200, books=150, ratings=5000, seed=3)


def curve_of(trained: TrainedStore) -> dict:
    return ModelStore(trained.store).metadata(trained.version)["learning_curve"]


def test_mult_dae_records_its_loss_per_step_on_training_and_held_out_readers(trained: TrainedStore) -> None:
    metadata = ModelStore(trained.store).metadata(trained.version)
    curve = metadata["learning_curve"]
    steps = curve["values"]

    assert metadata["kind"] == "mult-dae" and curve["x"] == "step" and curve["lower_is_better"]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 10
    assert steps[-1] == metadata["training"]["epochs"] * np.ceil(len(metadata["id_maps"]["users"]) / 128)
    assert len(curve["training"]) == len(curve["validation"]) == len(steps)
    assert curve["training"][-1] < curve["training"][0], "the fit lowers its own loss"
    assert curve["measure"] == "multinomial NLL per book (no dropout)"
    assert "held-out (test) ratings" in curve["validation_on"] and "nothing is chosen" in curve["validation_on"]


def test_measuring_the_curve_leaves_the_fit_as_it_is(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_split(TrainRequest(ratings=data / "ratings.csv"), read_ratings(data / "ratings.csv"), None)
    spec = get_spec("mult-dae")
    params = spec.params({"steps": 40})

    monkeypatch.setattr(training, "CURVE_POINTS", 1)
    rarely = training.fit(spec, split.train, params, seed=0, held_out=split.test)
    monkeypatch.setattr(training, "CURVE_POINTS", 40)
    often = training.fit(spec, split.train, params, seed=0, held_out=split.test)

    assert len(rarely.curve.values) == 2 and len(often.curve.values) == 41
    np.testing.assert_array_equal(rarely.weights.item_vectors, often.weights.item_vectors)
    np.testing.assert_array_equal(rarely.weights.user_vectors, often.weights.user_vectors)


def test_a_rating_kind_records_its_mse_per_epoch_on_training_and_its_validation_slice(
    data: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    result = train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="biased-mf", params={"epochs": 4}))
    metadata = store.metadata(result["version"])
    curve = metadata["learning_curve"]

    assert curve["x"] == "epoch" and curve["values"] == [1.0, 2.0, 3.0, 4.0][: len(curve["values"])]
    assert curve["training"] == metadata["history"]["mse"] and curve["validation"] == metadata["history"]["val_mse"]
    assert curve["measure"] == "mean squared error (stars²)" and "early stopping" in curve["validation_on"]


def test_ease_records_its_l2_search_and_nothing_when_l2_is_given(data: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    searched = store.metadata(train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="ease"))["version"])
    given = train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="ease", params={"l2": 50.0}))
    curve = searched["learning_curve"]

    assert curve["x"] == "l2" and not curve["lower_is_better"] and curve["training"] is None
    assert (
        curve["values"] == searched["history"]["l2"]
        and curve["validation"] == searched["history"]["validation_ndcg@10"]
    )
    assert store.metadata(given["version"])["learning_curve"] is None


def lines(ax) -> dict[str, int]:
    """Each labelled line of an axes and its number of points."""
    return {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()}


def test_the_plot_of_a_ranking_version_draws_its_curves_and_ndcg_and_recall_beside_popularity(
    trained: TrainedStore,
) -> None:
    metadata = ModelStore(trained.store).metadata(trained.version)
    curve_ax, metrics_ax = figure(metadata).axes
    points = len(metadata["learning_curve"]["values"])

    drawn = lines(curve_ax)
    assert drawn.pop("training data") == points and drawn.pop("held out") == points
    assert list(drawn) == [next(iter(drawn))] and next(iter(drawn)).startswith("best: ")
    assert curve_ax.get_xlabel() == "gradient step" and "multinomial NLL" in curve_ax.get_title()
    assert [t.get_text() for t in metrics_ax.get_xticklabels()] == ["ndcg@10", "recall@10"]
    assert [t.get_text() for t in metrics_ax.get_legend().get_texts()] == ["model", "popularity"]
    ratio = metadata["metrics"]["ndcg@10"] / metadata["baselines"]["popularity"]["ndcg@10"]
    assert metrics_ax.get_xlabel() == f"ndcg@10: {ratio:.2f}x popularity's"


def test_the_plot_of_a_rating_version_draws_rmse_and_mae_beside_bias_and_global_mean(
    data: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path)
    result = train_version(store, TrainRequest(ratings=data / "ratings.csv", kind="mf", params={"epochs": 3}))
    curve_ax, metrics_ax = figure(store.metadata(result["version"])).axes

    assert {"training data", "held out"} <= set(lines(curve_ax)) and curve_ax.get_xlabel() == "epoch"
    assert [t.get_text() for t in metrics_ax.get_xticklabels()] == ["rmse", "mae"]
    assert [t.get_text() for t in metrics_ax.get_legend().get_texts()] == ["model", "bias", "global_mean"]


def test_models_show_plot_writes_a_png_everyone_can_read(
    trained: TrainedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(trained.store))
    png = tmp_path / "curves.png"
    old = os.umask(0o077)  # a strict umask: the mode must not come from it
    try:
        code = main(["models", "show", trained.version, "--plot", str(png)])
    finally:
        os.umask(old)

    assert code == 0 and f"plot written to {png}" in capsys.readouterr().out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
