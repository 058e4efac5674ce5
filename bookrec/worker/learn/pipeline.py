"""From ratings (a file, or a ratings store snapshot taken in by the caller) to a saved model version: read, split,
fit, export, evaluate beside baselines, save.

`bookrec train` and the retrain job both call `train_version`; promotion is the caller's choice.
`measure_fold_in` measures a history-based kind on readers it never trained on (`bench.quality`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import DataError, ValidationError
from bookrec.shared.payloads import hyper_params
from bookrec.worker.learn import artifacts, export, gate, training
from bookrec.worker.learn.data import IdMap, Interactions, UserItems
from bookrec.worker.learn.datasets import RatingsData, ReadOptions, fingerprint, read_books, read_ratings
from bookrec.worker.learn.evaluation import (
    BiasBaseline,
    Popularity,
    evaluate_fold_in,
    evaluate_with_baselines,
    split_fold_in,
    split_ratings,
)
from bookrec.worker.learn.evaluation.splits import pair_keys
from bookrec.worker.learn.models import ModelSpec, get_spec
from bookrec.worker.learn.models.base import RANKING, FactorizedWeights
from bookrec.worker.learn.scoring import SavedModelScorer

logger = logging.getLogger(__name__)

Stage = Callable[[str], None]
"""Called as stage(name) when a step of the pipeline starts: read, train, evaluate, save."""


@dataclass(frozen=True)
class TrainRequest:
    """What to train on and how. Paths are used as given; callers confine them first if they must."""

    ratings: Path | RatingsData
    """A ratings file to read (with `read_options`), or ratings already taken in (`datasets.ratings_from_frame`)."""
    books: Path | None = None
    test: Path | None = None
    kind: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    split: str = "per-user"
    test_frac: float = 0.25
    seed: int = 0
    read_options: ReadOptions = ReadOptions()
    memory_mb: int | None = None
    """Refuse a model whose estimated training size on the data exceeds this (BOOKREC_TRAIN_MEMORY_MB); None: no limit."""


@dataclass(frozen=True)
class Split:
    """A train/test split indexed with maps built from the train part."""

    train_frame: pd.DataFrame
    test_frame: pd.DataFrame
    user_map: IdMap
    item_map: IdMap
    train: Interactions
    test: Interactions


def make_split(
    request: TrainRequest, ratings: RatingsData, test: RatingsData | None, keep_in_train: np.ndarray | None = None
) -> Split:
    """Split (or take the explicit test file) and index both parts with the train part's maps.

    `keep_in_train` (a mask over the ratings' rows) keeps those rows out of the test part."""
    if test is not None:
        train_frame, test_frame = ratings.frame, test.frame
    else:
        train_frame, test_frame = split_ratings(
            ratings.frame, request.split, request.test_frac, request.seed, keep_in_train
        )
    if train_frame.empty or test_frame.empty:
        raise DataError(
            f"{ratings.source}: too few ratings to hold out a test part; give more data or an explicit --test file"
        )
    user_map, item_map = IdMap.from_ids(train_frame["user"]), IdMap.from_ids(train_frame["item"])
    return Split(
        train_frame,
        test_frame,
        user_map,
        item_map,
        Interactions.from_frame(train_frame, user_map, item_map),
        Interactions.from_frame(test_frame, user_map, item_map),
    )


def train_version(
    store: ModelStore,
    request: TrainRequest,
    on_epoch: training.EpochCallback | None = None,
    on_stage: Stage | None = None,
    judge_with: gate.Gate | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save one model version; return `{"version", "model", "metrics", "baselines", ...}`.

    With `judge_with`, the candidate's test rows leave out every rating production trained on and the
    gate judges it on them (`gate.judge`): its verdict is returned as `decision`, production's metrics as
    `production_metrics` (both None without it). Hyper-parameters are checked against the kind's rules
    and the model's estimated size on the data against `request.memory_mb` before anything is trained.
    The version's metadata records the ratings store snapshot trained on as `snapshot` (None for a file).
    """
    stage = on_stage or (lambda name: None)
    spec = get_spec(request.kind)
    params = spec.params(hyper_params(request.params, spec.kind))
    stage("read")
    ratings = request.ratings
    if not isinstance(ratings, RatingsData):
        ratings = read_ratings(ratings, request.read_options)
    test = read_ratings(request.test, request.read_options) if request.test else None
    books = read_books(request.books, request.read_options) if request.books else None
    keep = gate.trained_by_production(store, judge_with, ratings.frame) if test is None else None
    split = make_split(request, ratings, test, keep)
    check_memory(spec, params, split.train.n_users, split.train.n_items, request.memory_mb)
    stage("train")
    trained = training.fit(spec, split.train, params, request.seed, on_epoch, held_out=split.test)
    stage("evaluate")
    bias = BiasBaseline(split.train)
    module = _serving_module(spec, trained, bias, split.train)
    metrics, baselines = evaluate_with_baselines(
        SavedModelScorer(module, bias), split.train, split.test, test_user_ids=split.test_frame["user"].to_numpy()
    )
    decision = gate.judge(store, judge_with, split, spec, metrics, fair=keep is not None) if judge_with else None
    stage("save")
    catalogue = _catalogue(split, ratings, test, books)
    metadata = {
        "kind": spec.kind,
        "task": spec.task,
        "gate_metric": spec.gate_metric,
        "params": trained.params,
        "params_asked": params,
        "serving_graph": artifacts.SERVING_GRAPH,
        "metrics": metrics,
        "baselines": baselines,
        "history": trained.history,
        "learning_curve": trained.curve.as_json() if trained.curve is not None else None,
        "training": {
            "seconds": round(trained.seconds, 2),
            "seed": request.seed,
            "epochs": len(trained.history.get("loss", [])),
        },
        "split": {
            "how": "explicit" if test else request.split,
            "test_frac": None if test else request.test_frac,
            "seed": request.seed,
            "kept_in_train": int(keep.sum()) if keep is not None else None,
        },
        "data_fingerprint": _data_fingerprint(ratings, test, request.books, split),
        "snapshot": ratings.snapshot,
        "id_maps": {"users": split.user_map.to_list(), "items": split.item_map.to_list()},
        "parent": store.production(),
    }
    with store.new_version(spec.kind) as writer:
        export.save(module, writer.path / artifacts.SAVED_MODEL)
        artifacts.write(writer.path, catalogue)
        artifacts.write_trained_pairs(writer.path, pair_keys(split.train_frame))
        writer.finish(metadata)
    logger.info("saved %s version %s: %s", spec.kind, writer.version, {k: metrics[k] for k in ("rmse", "ndcg@10")})
    return {
        "version": writer.version,
        "model": spec.kind,
        "metrics": metrics,
        "baselines": baselines,
        "gate_metric": spec.gate_metric,
        "seconds": round(trained.seconds, 2),
        "decision": decision,
        "production_metrics": decision["production_metrics"] if decision else None,
    }


def measure_fold_in(
    ratings: Path,
    kind: str | None = None,
    seed: int = 0,
    holdout_frac: float = 0.2,
    target_frac: float = 0.25,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fold-in quality of a history-based kind (see `evaluation.fold_in`), beside popularity and bias.

    The kind is trained on the readers not held out; its SavedModel, written and loaded back, ranks each
    held-out reader from their history through `recommend_history`, with no retraining. The file is read
    with its timestamp column, if any, to order each reader's ratings.

    Returns:
        {"model", "params", "metrics", "baselines": {"popularity", "bias"}, "seconds" (fitting),
        "train_rows", "held_out_readers"}.

    Raises:
        ValidationError: the kind is not history-based or a hyper-parameter is bad; DataError: the file.
    """
    spec = get_spec(kind)
    if not spec.history_based:
        raise ValidationError(f"{spec.kind} scores by user index only: fold-in needs a history-based kind")
    params = spec.params(hyper_params(params or {}, spec.kind))
    split = split_fold_in(read_ratings(ratings, keep_time=True).frame, holdout_frac, target_frac, seed)
    item_map = IdMap.from_ids(split.train["item"])
    train = Interactions.from_frame(split.train, IdMap.from_ids(split.train["user"]), item_map)
    trained = training.fit(spec, train, params, seed)
    bias = BiasBaseline(train)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifacts.SAVED_MODEL
        export.save(_serving_module(spec, trained, bias, train), path)
        metrics = evaluate_fold_in(SavedModelScorer(export.load(path), bias), split, item_map)
    baselines = {
        name: evaluate_fold_in(b, split, item_map) for name, b in (("popularity", Popularity(train)), ("bias", bias))
    }
    return {
        "model": spec.kind,
        "params": trained.params,
        "params_asked": params,
        "metrics": metrics,
        "baselines": baselines,
        "seconds": round(trained.seconds, 2),
        "train_rows": len(train),
        "held_out_readers": int(split.history["user"].nunique()),
    }


def check_memory(spec: ModelSpec, params: dict[str, Any], n_users: int, n_items: int, limit_mb: int | None) -> None:
    """ValidationError if `spec` with `params` on n_users x n_items is estimated to need more than `limit_mb`."""
    need_mb = spec.memory(n_users, n_items, params) / 2**20
    if limit_mb is not None and need_mb > limit_mb:
        sizes = ", ".join(f"{k} {params[k]}" for k in ("dim", "batch_size") if k in params)
        raise ValidationError(
            f"{spec.kind} with {sizes} on {n_users} users x {n_items} books needs about {need_mb:,.0f} MB to train, "
            f"more than the {limit_mb:,} MB BOOKREC_TRAIN_MEMORY_MB allows; lower dim or batch_size"
        )


def _serving_module(
    spec: ModelSpec, trained: training.Trained, bias: BiasBaseline, train: Interactions
) -> export.ServingModule:
    """The module to export: the trained heads, with the `bias` baseline as the star-rating head of ranking kinds."""
    rating_head = _bias_head(bias, train) if spec.task == RANKING else None
    return export.serving_module(trained.weights, rating_head, trained.history_weights)


def _bias_head(bias: BiasBaseline, train: Interactions) -> FactorizedWeights:
    """The `bias` baseline in factorized form: the star-rating head of ranking kinds."""
    return FactorizedWeights(
        user_vectors=np.zeros((train.n_users, 1), np.float32),
        item_vectors=np.zeros((train.n_items, 1), np.float32),
        user_bias=bias.user_bias,
        item_bias=bias.item_bias,
        global_bias=bias.mean,
    )


def _catalogue(
    split: Split, ratings: RatingsData, test: RatingsData | None, books: pd.DataFrame | None
) -> artifacts.Catalogue:
    """Seen sets over every rating in the files (train and test), popularity from train, book metadata."""
    everything = pd.concat([ratings.frame, test.frame]) if test is not None else ratings.frame
    seen_users = IdMap.from_ids(everything["user"])
    seen = UserItems.from_pairs(
        seen_users.index(everything["user"]),
        split.item_map.index(everything["item"]),
        len(seen_users),
        everything["rating"].to_numpy(),
    )
    return artifacts.Catalogue(
        seen_users, seen, split.train.item_counts(), artifacts.build_catalog(split.item_map, books)
    )


def _data_fingerprint(
    ratings: RatingsData, test: RatingsData | None, books: Path | None, split: Split
) -> dict[str, Any]:
    """Hashes and counts of the data a version was trained on; a store snapshot's ratings have no path but the
    store's (redacted) URL as `store`, and the sha256 of their sorted rows."""

    def describe(data: RatingsData) -> dict[str, Any]:
        where = {"path": str(data.path)} if data.path is not None else {"path": None, "store": data.snapshot["url"]}
        return {
            **where,
            **data.digest(),
            "rows": len(data.frame),
            "users": int(data.frame["user"].nunique()),
            "items": int(data.frame["item"].nunique()),
            "duplicates_dropped": data.duplicates_dropped,
        }

    return {
        "ratings": describe(ratings),
        "test": describe(test) if test is not None else None,
        "books": {"path": str(books), **fingerprint(books)} if books else None,
        "train_rows": len(split.train),
        "test_rows": len(split.test),
    }
