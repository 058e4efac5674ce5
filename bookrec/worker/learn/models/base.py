"""What a model kind is: how to build its Keras model, what it is trained on, and how it is served.

Each kind lives in its own module and exposes a `SPEC`. Training (`worker/training.py`),
evaluation (`worker/evaluation/`) and serving export (`worker/serving.py`) work on any kind
through this contract, as TensorFlow Recommenders separates models, tasks and top-k layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

RATING = "rating"
RANKING = "ranking"

FLOAT_BYTES = 4
WEIGHT_COPIES = 6
"""Copies of each weight a fit and export hold at once: the weight, its gradient, Adam's two moments, the
serving module's copy and the SavedModel being written."""


def training_bytes(n_weights: int, activations: int = 0) -> int:
    """Estimated bytes to fit and export `n_weights` float32 weights, plus `activations` float32 values of a batch."""
    return (n_weights * WEIGHT_COPIES + activations) * FLOAT_BYTES


@dataclass(frozen=True)
class FactorizedWeights:
    """Serving form score(u, i) = user_vectors[u] . item_vectors[i] + user_bias[u] + item_bias[i] + global_bias."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_bias: float


@dataclass(frozen=True)
class MLPWeights:
    """Serving form score(u, i) = MLP(concat(user_vectors[u], item_vectors[i])) with ReLU hidden layers."""

    user_vectors: np.ndarray
    item_vectors: np.ndarray
    kernels: list[np.ndarray]
    biases: list[np.ndarray]


@dataclass(frozen=True)
class EncoderWeights:
    """History form of a factorized kind: a reader's vector from their books, scored like a trained user's.

    vector = tanh(x / |x|_2 @ kernel + bias) for the reader's multi-hot row x over the catalogue (x = 0 stays 0
    before the kernel); score(reader, i) = vector . item_vectors[i] + item_bias[i] + global_bias with the
    factorized weights' book vectors and biases (a reader has no user bias).
    """

    kernel: np.ndarray  # [n_items, dim]
    bias: np.ndarray  # [dim]


@dataclass(frozen=True)
class ItemItemWeights:
    """Serving form of an item-item kind: score(reader, i) = sum of w_j B[j, i] over the reader's distinct books j,
    w_j the reader's rating of j when the kind is `weighted` (B was solved on rating-weighted rows), else 1.

    B is stored as it was solved (`dense`, [n_items, n_items] float32 with a zero diagonal), or pruned to the
    largest entries of each column and kept by source book j in CSR form (`row_splits` [n_items + 1] int64,
    `columns` int32, `values` float32), with `dense` None. A training user's scores are those of their training
    books (`history_indptr` [n_users + 1] int64, `history_items` int32, `history_ratings` float32: the users'
    books and ratings in CSR form).
    """

    n_items: int
    history_indptr: np.ndarray
    history_items: np.ndarray
    history_ratings: np.ndarray
    weighted: bool
    dense: np.ndarray | None = None
    row_splits: np.ndarray | None = None
    columns: np.ndarray | None = None
    values: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        """Training users (rows of the index-based signatures)."""
        return len(self.history_indptr) - 1


@dataclass(frozen=True)
class Curve:
    """A learning curve: what a kind optimises (or chooses a hyper-parameter on) along `x`, measured on its training
    data and on data it did not fit. A version's metadata keeps it as `learning_curve` (`as_json`), which
    `bookrec models show --plot` draws.

    Attributes:
        x: what the curve runs along: `epoch`, `step` (gradient steps) or `l2` (the values tried).
        values: x at each point.
        measure: what is measured, in words (e.g. "mean squared error (stars²)").
        lower_is_better: whether the measure is a loss (True) or a score (False).
        training: the measure on the training data at each point (None when the kind measures none).
        validation: the measure on the data named by `validation_on` at each point (None without such data).
        validation_on: what that data is, and whether anything was chosen on it.
    """

    x: str
    values: list[float]
    measure: str
    lower_is_better: bool
    training: list[float] | None
    validation: list[float] | None
    validation_on: str | None

    def as_json(self) -> dict[str, Any]:
        """The curve as metadata.json stores it: these attributes as keys."""
        return asdict(self)


@dataclass(frozen=True)
class HeldOutLoss:
    """How a kind fed whole histories measures its loss on rows it did not fit, for its learning curve: `per_book`
    (model, input rows, target rows) -> the loss of the target rows' books given the input rows (no dropout), per
    book; `measure` says what that is in words."""

    measure: str
    per_book: Callable[[Any, np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Solved:
    """What a closed-form kind's `solve` returns: the model (multi-hot rows -> scores), its serving weights, the
    parameters it settled on (a value chosen on validation filled in), its record of that choice and, when it made
    one, that record as a learning curve."""

    model: Any
    weights: ItemItemWeights
    params: dict[str, Any]
    history: dict[str, list[float]]
    curve: Curve | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model kind.

    Attributes:
        kind: the name used by `--model` and stored in metadata.json.
        task: `rating` (trained on (user, item) -> stars, judged by rmse) or `ranking`
            (trained on user -> rated item over the whole catalogue, judged by ndcg@10).
        defaults: hyper-parameters; `--dim`, `--epochs` and retrain params override them.
        feed: what the model is fitted on: `pairs` ((user, item) -> stars), `positives`
            (user -> one rated item, a class over the catalogue), `histories` (a user's
            multi-hot row of rated items -> the same row) or `closed-form` (no gradient fit: `solve`).
        build: (n_users, n_items, params, global_mean) -> compiled keras.Model (None for a closed-form kind).
        serving_weights: (trained keras.Model, training Interactions) -> the weights the SavedModel serves
            (None for a closed-form kind).
        memory: (n_users, n_items, params) -> estimated bytes to fit and export the model (see `training_bytes`).
        description: one line for `--help` and the README.
        history_weights: for history-based kinds, (trained keras.Model) -> the weights the SavedModel's
            `recommend_history` signature scores readers from their books with; None for kinds that score
            only by user index (they get no history signature).
        solve: for a closed-form kind (feed `closed-form`), (training Interactions, params, seed) -> `Solved`,
            in place of build, fit and serving_weights; such a kind scores readers from their books.
        held_out_loss: for a kind fed whole histories, its loss on rows it did not fit, drawn per step as its
            learning curve (kinds fed pairs or positives have a validation slice of their own, drawn per epoch).
    """

    kind: str
    task: str
    feed: str
    defaults: dict[str, Any]
    memory: Callable[[int, int, dict[str, Any]], int]
    build: Callable[..., Any] | None = None
    serving_weights: Callable[[Any, Any], FactorizedWeights | MLPWeights] | None = None
    description: str = ""
    history_weights: Callable[[Any], EncoderWeights] | None = None
    solve: Callable[[Any, dict[str, Any], int], Solved] | None = None
    held_out_loss: HeldOutLoss | None = None
    gate_metric: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate_metric", "ndcg@10" if self.task == RANKING else "rmse")

    @property
    def history_based(self) -> bool:
        """Whether the kind scores readers from their books (and its SavedModel has `recommend_history`)."""
        return self.history_weights is not None or self.solve is not None

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with the non-None `overrides`."""
        merged = dict(self.defaults)
        merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return merged
