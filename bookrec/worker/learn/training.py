"""Fitting a model kind on training interactions: data feeds, validation slice, early stopping, progress.

The loss lives with each model kind (`worker/models/`); this module only runs the fit loop,
as TensorFlow Recommenders keeps tasks and training apart from the model definition.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import keras
import numpy as np

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import EncoderWeights, FactorizedWeights, ItemItemWeights, MLPWeights, ModelSpec
from bookrec.worker.learn.models.feeds import UserRows

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, int, dict[str, float]], None]
"""Called as on_epoch(epoch_done (1-based), epochs_planned, logs) after every epoch."""

VALIDATION_FRACTION = 0.05

StopCheck = Callable[[], None]
"""Called between training steps; raises to stop the fit (a cancelled retrain raises RetrainCancelled)."""
STOP_CHECK_S = 0.5
"""Least seconds between two stop checks inside an epoch (each epoch's end is always checked)."""
_stop_check: ContextVar[StopCheck | None] = ContextVar("stop_check", default=None)


@contextmanager
def stop_check(check: StopCheck) -> Iterator[None]:
    """Run `check` between the steps and at each epoch's end of every `fit` inside the block; it raises to stop."""
    token = _stop_check.set(check)
    try:
        yield
    finally:
        _stop_check.reset(token)


@dataclass(frozen=True)
class Trained:
    """A fitted model with what is needed to export and describe it."""

    spec: ModelSpec
    model: keras.Model | Any  # a closed-form kind's model is its own (`Solved.model`)
    params: dict[str, Any]
    history: dict[str, list[float]]
    seconds: float
    weights: FactorizedWeights | MLPWeights | ItemItemWeights
    history_weights: EncoderWeights | None = None  # history-based kinds only (`ModelSpec.history_weights`)


class _EpochProgress(keras.callbacks.Callback):
    def __init__(self, on_epoch: EpochCallback, epochs: int) -> None:
        super().__init__()
        self.on_epoch, self.epochs = on_epoch, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.on_epoch(epoch + 1, self.epochs, {k: float(v) for k, v in (logs or {}).items()})


class _StopCheck(keras.callbacks.Callback):
    """Calls a StopCheck after a step at most every STOP_CHECK_S seconds, and after every epoch."""

    def __init__(self, check: StopCheck) -> None:
        super().__init__()
        self.check, self.checked = check, time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if time.monotonic() - self.checked >= STOP_CHECK_S:
            self._check()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._check()

    def _check(self) -> None:
        self.checked = time.monotonic()
        self.check()


def fit(
    spec: ModelSpec, train: Interactions, params: dict[str, Any], seed: int, on_epoch: EpochCallback | None = None
) -> Trained:
    """Build and fit `spec` on `train` with `params` (already merged with the defaults); repeatable for a seed.

    A closed-form kind is solved instead (`ModelSpec.solve`); its `Trained.params` hold the values it chose."""
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    if spec.solve is not None:
        solved = spec.solve(train, params, seed)
        seconds = time.perf_counter() - started
        logger.info("solved %s in %.1f s", spec.kind, seconds)
        return Trained(spec, solved.model, solved.params, solved.history, seconds, solved.weights)
    global_mean = float(train.ratings.mean()) if len(train) else 0.0
    model = spec.build(train.n_users, train.n_items, params, global_mean)
    fit_args = _FEEDS[spec.feed](train, params, seed)
    callbacks = list(fit_args.pop("callbacks"))
    if on_epoch is not None:
        callbacks.append(_EpochProgress(on_epoch, fit_args["epochs"]))
    if (check := _stop_check.get()) is not None:
        callbacks.append(_StopCheck(check))
    history = model.fit(verbose=0, callbacks=callbacks, **fit_args)
    weights = spec.serving_weights(model, train)
    history_weights = spec.history_weights(model) if spec.history_based else None
    seconds = time.perf_counter() - started
    logger.info("trained %s in %.1f s over %d epochs", spec.kind, seconds, len(history.history.get("loss", [])))
    return Trained(
        spec,
        model,
        params,
        {k: [float(x) for x in v] for k, v in history.history.items()},
        seconds,
        weights,
        history_weights,
    )


def _validation_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): a random VALIDATION_FRACTION of the training rows held out for early stopping."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(n * VALIDATION_FRACTION)) if n >= 20 else 0
    return order[n_val:], order[:n_val]


def _early_stopping(monitor: str, params: dict[str, Any], has_validation: bool) -> list[keras.callbacks.Callback]:
    if not has_validation:
        return []
    return [keras.callbacks.EarlyStopping(monitor=monitor, patience=int(params["patience"]), restore_best_weights=True)]


def _pairs(train: Interactions, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """(user, item) -> rating, early-stopped on the held-out slice's MSE (without the L2 term)."""
    fit_rows, val_rows = _validation_split(len(train), seed)
    x = lambda rows: {"user": train.users[rows], "item": train.items[rows]}  # noqa: E731
    return {
        "x": x(fit_rows),
        "y": train.ratings[fit_rows],
        "validation_data": (x(val_rows), train.ratings[val_rows]) if len(val_rows) else None,
        "batch_size": int(params["batch_size"]),
        "epochs": int(params["epochs"]),
        "shuffle": True,
        "callbacks": _early_stopping("val_mse", params, len(val_rows) > 0),
    }


def _positives(train: Interactions, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """user -> rated item as a class over the catalogue, early-stopped on held-out cross-entropy."""
    fit_rows, val_rows = _validation_split(len(train), seed)
    return {
        "x": {"user": train.users[fit_rows]},
        "y": train.items[fit_rows],
        "validation_data": ({"user": train.users[val_rows]}, train.items[val_rows]) if len(val_rows) else None,
        "batch_size": int(params["batch_size"]),
        "epochs": int(params["epochs"]),
        "shuffle": True,
        "callbacks": _early_stopping("val_loss", params, len(val_rows) > 0),
    }


def _histories(train: Interactions, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Multi-hot user rows -> themselves, for a budget of gradient steps (`steps`) unless `epochs` is given."""
    rows = UserRows(train.by_user(), train.n_items, int(params["batch_size"]), seed=seed)
    epochs = params.get("epochs")
    if not epochs:
        epochs = min(int(params["max_epochs"]), max(1, math.ceil(int(params["steps"]) / len(rows))))
    return {"x": rows, "epochs": int(epochs), "callbacks": []}


_FEEDS = {"pairs": _pairs, "positives": _positives, "histories": _histories}
