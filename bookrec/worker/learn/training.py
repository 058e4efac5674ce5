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

from bookrec.worker.learn.data import Interactions, UserItems
from bookrec.worker.learn.models.base import (
    Curve,
    EncoderWeights,
    FactorizedWeights,
    HeldOutLoss,
    ItemItemWeights,
    MLPWeights,
    ModelSpec,
)
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

CURVE_POINTS = 25
"""A kind fed whole histories measures its learning curve at about this many evenly spaced steps, and before the
first."""
CURVE_CELLS = 2_000_000
"""Each of those measurements reads at most this many reader x book cells (256 readers of 7,800 books), of training
readers and of held-out ones: a sample, seeded, the same at every step."""
VALIDATION_SLICE = "5% of the training ratings, held out; early stopping watches it"


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
    curve: Curve | None = None  # what the fit optimised, on training and held-out data (`Curve`)


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


class _StepCurve(keras.callbacks.Callback):
    """Measures a kind's `HeldOutLoss` before the first step and every `every` steps (and after the last): on sampled
    training readers (their rows in and out) and on sampled held-out readers (their training rows in, their held-out
    books out). It only reads the model, so the fit goes exactly as without it."""

    def __init__(
        self,
        loss: HeldOutLoss,
        training: tuple[np.ndarray, np.ndarray],
        held_out: tuple[np.ndarray, np.ndarray] | None,
        every: int,
        total: int,
    ) -> None:
        super().__init__()
        self.loss, self.training_rows, self.held_out_rows = loss, training, held_out
        self.every, self.total, self.step = every, total, 0
        self.steps: list[int] = []
        self.training: list[float] = []
        self.held_out: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._measure()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.step += 1
        if self.step % self.every == 0 or self.step == self.total:
            self._measure()

    def _measure(self) -> None:
        self.steps.append(self.step)
        self.training.append(self.loss.per_book(self.model, *self.training_rows))
        if self.held_out_rows is not None:
            self.held_out.append(self.loss.per_book(self.model, *self.held_out_rows))

    def curve(self) -> Curve:
        """The measurements as a learning curve along gradient steps."""
        return Curve(
            x="step",
            values=[float(s) for s in self.steps],
            measure=self.loss.measure,
            lower_is_better=True,
            training=self.training,
            validation=self.held_out if self.held_out_rows is not None else None,
            validation_on=(
                f"the held-out (test) ratings of {len(self.held_out_rows[0])} readers, their training books in; "
                "nothing is chosen on them (the kind trains for a fixed number of steps)"
            )
            if self.held_out_rows is not None
            else None,
        )


def fit(
    spec: ModelSpec,
    train: Interactions,
    params: dict[str, Any],
    seed: int,
    on_epoch: EpochCallback | None = None,
    held_out: Interactions | None = None,
) -> Trained:
    """Build and fit `spec` on `train` with `params` (already merged with the defaults); repeatable for a seed.

    A closed-form kind is solved instead (`ModelSpec.solve`); its `Trained.params` hold the values it chose.
    `held_out` (ratings indexed as `train`: the test part of a split) is where a kind with no validation slice of
    its own (one fed whole histories) also measures its learning curve; it changes nothing in the fit."""
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    if spec.solve is not None:
        solved = spec.solve(train, params, seed)
        seconds = time.perf_counter() - started
        logger.info("solved %s in %.1f s", spec.kind, seconds)
        return Trained(spec, solved.model, solved.params, solved.history, seconds, solved.weights, curve=solved.curve)
    global_mean = float(train.ratings.mean()) if len(train) else 0.0
    model = spec.build(train.n_users, train.n_items, params, global_mean)
    fit_args = _FEEDS[spec.feed](train, params, seed)
    callbacks = list(fit_args.pop("callbacks"))
    step_curve = _step_curve(spec, train, held_out, fit_args, seed)
    if step_curve is not None:
        callbacks.append(step_curve)
    if on_epoch is not None:
        callbacks.append(_EpochProgress(on_epoch, fit_args["epochs"]))
    if (check := _stop_check.get()) is not None:
        callbacks.append(_StopCheck(check))
    history = model.fit(verbose=0, callbacks=callbacks, **fit_args)
    weights = spec.serving_weights(model, train)
    history_weights = spec.history_weights(model) if spec.history_based else None
    seconds = time.perf_counter() - started
    logger.info("trained %s in %.1f s over %d epochs", spec.kind, seconds, len(history.history.get("loss", [])))
    recorded = {k: [float(x) for x in v] for k, v in history.history.items()}
    curve = step_curve.curve() if step_curve is not None else _epoch_curve(spec, recorded)
    return Trained(spec, model, params, recorded, seconds, weights, history_weights, curve)


def _step_curve(
    spec: ModelSpec, train: Interactions, held_out: Interactions | None, fit_args: dict[str, Any], seed: int
) -> _StepCurve | None:
    """The learning curve's callback for a kind fed whole histories (None for the others): sampled readers' dense
    rows, at most CURVE_CELLS cells each, and the measuring interval."""
    if spec.held_out_loss is None:
        return None
    rng = np.random.default_rng(seed)
    by_user = train.by_user()
    readers = max(1, CURVE_CELLS // max(train.n_items, 1))
    known = np.flatnonzero(by_user.counts() > 0)
    chosen = np.sort(rng.choice(known, size=min(readers, len(known)), replace=False))
    training = (_dense(by_user, chosen, train.n_items),) * 2
    rows = None
    if held_out is not None:
        targets = held_out.by_user()
        both = np.flatnonzero((by_user.counts() > 0) & (targets.counts()[: by_user.n_users] > 0))
        if len(both):
            picked = np.sort(rng.choice(both, size=min(readers, len(both)), replace=False))
            rows = (_dense(by_user, picked, train.n_items), _dense(targets, picked, train.n_items))
    total = int(fit_args["epochs"]) * len(fit_args["x"])
    every = max(1, math.ceil(total / CURVE_POINTS))
    return _StepCurve(spec.held_out_loss, training, rows, every, total)


def _dense(by_user: UserItems, users: np.ndarray, n_items: int) -> np.ndarray:
    """The users' multi-hot rows over the catalogue, dense float32."""
    rows = np.zeros((len(users), n_items), dtype=np.float32)
    row, items = by_user.rows(users)
    rows[row, items] = 1.0
    return rows


def _epoch_curve(spec: ModelSpec, history: dict[str, list[float]]) -> Curve | None:
    """The learning curve of a kind with a validation slice (fed pairs or positives) from Keras' per-epoch history:
    the data term of its loss, on its training rows and on the slice; None for a feed without one."""
    if spec.feed == "pairs":  # mse: the loss without an L2 term (biased-mf's loss adds one)
        measure, key = "mean squared error (stars²)", "mse"
    elif spec.feed == "positives":
        measure, key = "cross-entropy of a rated book over the catalogue", "loss"
    else:
        return None
    training = history.get(key) or []
    return Curve(
        x="epoch",
        values=[float(e) for e in range(1, len(training) + 1)],
        measure=measure,
        lower_is_better=True,
        training=training,
        validation=history.get(f"val_{key}"),
        validation_on=VALIDATION_SLICE if f"val_{key}" in history else None,
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
