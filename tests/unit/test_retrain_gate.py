"""The retrain gate end to end, with real training on small synthetic catalogues: a fair test part, like with
like, no retrain without new ratings, and the retrain's inputs checked before anything is trained.

Each test runs `run_retrain` (the retrain job's body) in a worker context on fakeredis against a copy of
a store whose production version was trained on 85% of a catalogue; the other 15% are the "new" ratings.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import numpy as np
import pandas as pd
import pytest

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import DataError, ValidationError
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.worker.learn.datasets import read_ratings
from bookrec.worker.learn.evaluation import split_ratings
from bookrec.worker.learn.pipeline import TrainRequest, train_version
from bookrec.worker.serve.context import WorkerContext
from bookrec.worker.serve.retrain import run_retrain
from tests.conftest import synth_small

DAE_STEPS = {"steps": 60}


@dataclass(frozen=True)
class World:
    """Rating files in `data` (base.csv: 85% of more.csv, drawn at random) and stores trained on base.csv."""

    data: Path
    ranking_store: Path  # a mult-dae version in production
    rating_store: Path  # a biased-mf version in production


def _production(store: Path, ratings: Path, kind: str, params: dict) -> Path:
    """Train `kind` on `ratings` into `store` and put it in production."""
    models = ModelStore(store)
    version = train_version(models, TrainRequest(ratings=ratings, kind=kind, params=params))["version"]
    models.set_production(version)
    return store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("gate")
    data = synth_small(root / "data", users=300, books=200, ratings=7000, seed=5)
    full = pd.read_csv(data / "ratings.csv")
    full.to_csv(data / "more.csv", index=False)
    full.sample(frac=0.85, random_state=1).sort_index().to_csv(data / "base.csv", index=False)
    return World(
        data,
        _production(root / "ranking", data / "base.csv", "mult-dae", DAE_STEPS),
        _production(root / "rating", data / "base.csv", "biased-mf", {}),
    )


def _context(store: Path, tmp_path: Path, data: Path, **settings) -> WorkerContext:
    """A worker context on fakeredis over a private copy of `store`."""
    copy = shutil.copytree(store, tmp_path / "models")
    return WorkerContext(
        Settings(model_store=copy, data_dir=data, **settings),
        fakeredis.FakeRedis(),
        Keys(),
        ModelStore(copy),
        None,
    )


def _retrain(ctx: WorkerContext, ratings: Path, model: str = "mult-dae", force: bool = False, **options) -> dict:
    params = options.pop("params", DAE_STEPS if model == "mult-dae" else {})
    return run_retrain(ctx, None, model, params, ratings, options.pop("books", None), force, seed=0)


def test_a_retrain_on_more_ratings_from_the_same_tastes_is_promoted_judged_on_ratings_production_never_saw(
    world: World, tmp_path: Path
) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data)
    production = ctx.store.production()

    result = _retrain(ctx, world.data / "more.csv")

    decision = result["decision"]
    assert result["promoted"] is True and ctx.store.production() == result["version"] != production, decision
    assert decision["metric"] == "ndcg@10" and decision["candidate"] >= decision["production"]
    assert decision["test_rows_unseen_by_production"] is True and decision["no_new_ratings"] is False
    # Every rating production trained on stayed in the candidate's train part: exactly production's train rows.
    base = read_ratings(world.data / "base.csv").frame
    production_train, _ = split_ratings(base, "per-user", 0.25, seed=0)
    metadata = ctx.store.metadata(result["version"])
    assert metadata["split"]["kept_in_train"] == len(production_train)
    assert decision["test_rows"] == metadata["data_fingerprint"]["test_rows"] > 0


def test_a_candidate_trained_on_shuffled_ratings_is_rejected(world: World, tmp_path: Path) -> None:
    ctx = _context(world.rating_store, tmp_path, world.data)
    production = ctx.store.production()
    more = pd.read_csv(world.data / "more.csv")
    base = read_ratings(world.data / "base.csv").frame
    production_train, _ = split_ratings(base, "per-user", 0.25, seed=0)
    trained = set(zip(production_train["user"], production_train["item"]))
    # The stars of every rating production trained on, shuffled among those rows: meaningless to learn from,
    # while the rows the gate may test on (the ones production never saw) keep their real stars.
    shuffled = np.array([(str(u), str(i)) in trained for u, i in zip(more["user_id"], more["book_id"])])
    more.loc[shuffled, "rating"] = np.random.default_rng(0).permutation(more.loc[shuffled, "rating"].to_numpy())
    more.to_csv(tmp_path / "shuffled.csv", index=False)

    result = _retrain(ctx, tmp_path / "shuffled.csv", model="biased-mf", params={"epochs": 5})

    decision = result["decision"]
    assert result["promoted"] is False and ctx.store.production() == production
    assert decision["metric"] == "rmse" and decision["candidate"] > decision["production"], decision
    assert "worse than production" in decision["reason"]


def test_a_retrain_on_unchanged_ratings_trains_nothing_and_says_why_unless_forced(world: World, tmp_path: Path) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data)
    production = ctx.store.production()
    versions = ctx.store.list()

    result = _retrain(ctx, world.data / "base.csv")

    assert result["promoted"] is False and result["version"] is None and result["metrics"] is None
    assert result["decision"]["no_new_ratings"] is True and result["decision"]["promote"] is False
    assert result["decision"]["reason"].startswith(f"no new ratings since production {production}")
    assert ctx.store.list() == versions and ctx.store.production() == production
    assert ctx.client.get(ctx.keys.retrain_lock) is None

    forced = _retrain(ctx, world.data / "base.csv", force=True)

    assert forced["promoted"] is True and ctx.store.production() == forced["version"] != production
    assert forced["decision"]["no_new_ratings"] is False and "forced" in forced["decision"]["reason"]


def test_a_ranking_production_is_not_replaced_by_a_rating_candidate_without_force(world: World, tmp_path: Path) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data)
    production = ctx.store.production()

    result = _retrain(ctx, world.data / "more.csv", model="biased-mf", params={"epochs": 5})

    decision = result["decision"]
    assert decision["metric"] == "ndcg@10", "a rating candidate is judged on the ranking readers see"
    assert result["promoted"] is False and ctx.store.production() == production
    assert "a rating candidate against a ranking production is judged on ndcg@10" in decision["reason"]

    forced = _retrain(ctx, world.data / "more.csv", model="biased-mf", params={"epochs": 5}, force=True)

    assert forced["promoted"] is True and ctx.store.metadata(ctx.store.production())["kind"] == "biased-mf"


def test_a_named_books_file_that_is_missing_fails_the_retrain_naming_it(world: World, tmp_path: Path) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data)
    versions = ctx.store.list()

    with pytest.raises(DataError, match="missing-books.csv: no such file"):
        _retrain(ctx, world.data / "more.csv", books=world.data / "missing-books.csv")

    assert ctx.store.list() == versions and ctx.client.get(ctx.keys.retrain_lock) is None


def test_a_model_too_big_for_the_trainer_is_refused_before_training(world: World, tmp_path: Path) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data, train_memory_mb=2)
    versions = ctx.store.list()

    with pytest.raises(ValidationError) as refused:
        _retrain(ctx, world.data / "more.csv", params={"dim": 4096})

    assert "mult-dae with dim 4096, batch_size 128 on " in str(refused.value)
    assert "more than the 2 MB BOOKREC_TRAIN_MEMORY_MB allows" in str(refused.value)
    assert ctx.store.list() == versions


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"batch_size": 0}, "mult-dae hyper-parameter batch_size must be a whole number from 1 to 65536, got 0"),
        ({"max_epochs": 0}, "mult-dae hyper-parameter max_epochs must be a whole number from 1 to 1000, got 0"),
        ({"dim": 10**6}, "mult-dae hyper-parameter dim must be a whole number from 1 to 4096, got 1000000"),
        ({"epochs": 10**9}, "mult-dae hyper-parameter epochs must be a whole number from 1 to 200, got 1000000000"),
        ({"dimm": 8}, "unknown mult-dae hyper-parameter(s) dimm; mult-dae takes: dim, dropout, l2,"),
    ],
    ids=["batch_size 0", "max_epochs 0", "dim 10**6", "epochs 10**9", "unknown key"],
)
def test_bad_params_reach_no_training(world: World, tmp_path: Path, params: dict, message: str) -> None:
    ctx = _context(world.ranking_store, tmp_path, world.data)

    with pytest.raises(ValidationError) as refused:
        _retrain(ctx, world.data / "more.csv", params=params)

    assert str(refused.value).startswith(message)
    assert len(ctx.store.list()) == 1
