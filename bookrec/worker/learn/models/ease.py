"""`ease`: a book-book linear autoencoder solved in closed form (EASE), served as the item-item matrix itself.

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW 2019): the book-book weights B minimise
||X - X B||^2 + l2 ||B||^2 with a zero diagonal (no book may explain itself), where X is the readers x books
matrix of 1 for each rating (`weighting` "binary", the default) or of the ratings' stars ("rating": it folds
readers in better on MovieLens but serves 1.7 times slower, see the README's Quality). The optimum is
closed-form: with P = (X^T X + l2 I)^-1, B = I - P / diag(P). A reader's scores are x B, the sum of B's rows of their books weighted as X is, so a new
rating folds in with no retraining.

The ridge penalty l2 is chosen on a validation split of the training data (each user's ratings, 10% held out
at random): a coarse grid (scaled by the mean squared entry of X, so stars and 0/1 rows are penalised alike),
then one refinement beside the best, each scored by ndcg@10 of the held-out ratings; every tried value and its
score are kept (`Solved.history`, the version's metadata). `--params l2=...` fixes it. The solves go through
LAPACK's Cholesky factorisation and inverse (scipy's potrf/potri, a third of the time of a general inverse), the grid in float32 and the final B in float64, stored as float32. A catalogue
larger than `dense_max` books (default BOOKREC_EASE_DENSE_MAX) is served with each column of B pruned to its
`keep` largest entries (by magnitude), sparse in the graph.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import sparse
from scipy.linalg import lapack

from bookrec.shared.settings import Settings
from bookrec.worker.learn.data import Interactions, UserItems
from bookrec.worker.learn.evaluation.baselines import top_k_from_scores
from bookrec.worker.learn.evaluation.metrics import ranking_metrics
from bookrec.worker.learn.evaluation.splits import per_user_mask
from bookrec.worker.learn.models.base import RANKING, Curve, ItemItemWeights, ModelSpec, Solved

logger = logging.getLogger(__name__)

L2_GRID = (100.0, 400.0, 1600.0)
"""The coarse grid of l2 values tried on validation, times the mean squared entry of X; the best is then refined
once, by a factor of 2 toward its better neighbour (outward at an edge of the grid): four solves in all."""
VALIDATION_FRACTION = 0.1
VALIDATION_READERS = 5000
"""At most this many readers with held-out ratings score each tried l2 (a random sample, the same for every l2)."""
VALIDATION_K = 10
PRUNE_CHUNK = 1024
"""Columns of B pruned at a time."""


class ItemItemModel:
    """Reader rows (weighted as X is) -> scores over the catalogue (rows @ B), as served."""

    def __init__(self, weights: ItemItemWeights) -> None:
        self.weights = weights

    def __call__(self, rows: np.ndarray, training: bool = False) -> np.ndarray:
        """[len(rows), n_items] scores of dense reader rows (`training` is accepted as Keras models take it)."""
        return np.asarray(rows, np.float32) @ dense_matrix(self.weights)


def dense_matrix(weights: ItemItemWeights) -> np.ndarray:
    """B as a dense [n_items, n_items] float32 matrix (the pruned entries zero)."""
    if weights.dense is not None:
        return weights.dense
    n = weights.n_items
    rows = np.repeat(np.arange(n), np.diff(weights.row_splits))
    out = np.zeros((n, n), np.float32)
    out[rows, weights.columns] = weights.values
    return out


def solve(train: Interactions, params: dict[str, Any], seed: int) -> Solved:
    """EASE on `train`'s reader x book matrix (weighted by `params["weighting"]`), l2 from params or chosen on
    validation (see the module)."""
    weighted = params["weighting"] == "rating"
    by_user = train.by_user()
    history: dict[str, list[float]] = {}
    l2 = params.get("l2")
    if l2 is None:
        l2, history = choose_l2(train, seed, weighted)
    matrix = item_item(gram(by_user, train.n_items, weighted), float(l2), np.float64)
    dense_max = int(params.get("dense_max") or Settings.from_env().ease_dense_max)
    served = ItemItemWeights(
        train.n_items, by_user.indptr, by_user.indices, entries(by_user, weighted, np.float32), weighted
    )
    weights = (
        replace(served, dense=matrix) if train.n_items <= dense_max else prune(matrix, int(params["keep"]), served)
    )
    logger.info(
        "solved ease (%s) with l2 %g over %d books (%s)",
        params["weighting"],
        l2,
        train.n_items,
        "dense" if weights.dense is not None else "pruned",
    )
    return Solved(ItemItemModel(weights), weights, {**params, "l2": float(l2)}, history, _curve(history))


def _curve(history: dict[str, list[float]]) -> Curve | None:
    """The l2 search as a learning curve (None when l2 was given): validation ndcg@10 over the values tried."""
    if not history:
        return None
    return Curve(
        x="l2",
        values=history["l2"],
        measure=f"ndcg@{VALIDATION_K}",
        lower_is_better=False,
        training=None,
        validation=history[f"validation_ndcg@{VALIDATION_K}"],
        validation_on=f"{VALIDATION_FRACTION:.0%} of each training reader's ratings, held out; the best l2 is chosen on it",
    )


def entries(by_user: UserItems, weighted: bool, dtype: type) -> np.ndarray:
    """X's value for each of the users' ratings (parallel to `by_user.indices`): the stars if `weighted`, else 1."""
    return by_user.ratings.astype(dtype) if weighted else np.ones(len(by_user.indices), dtype)


def reader_rows(by_user: UserItems, n_items: int, weighted: bool, dtype: type = np.float64) -> sparse.csr_matrix:
    """X: the users' rows over the catalogue, sparse (`entries` as values)."""
    values = entries(by_user, weighted, dtype)
    return sparse.csr_matrix((values, by_user.indices, by_user.indptr), shape=(by_user.n_users, n_items))


def gram(by_user: UserItems, n_items: int, weighted: bool) -> np.ndarray:
    """X^T X (float64, [n_items, n_items]) of the users' rows."""
    x = reader_rows(by_user, n_items, weighted)
    return np.asarray((x.T @ x).todense())


def item_item(gram_matrix: np.ndarray, l2: float, dtype: type) -> np.ndarray:
    """B = I - P / diag(P) with P = (gram + l2 I)^-1, solved in `dtype`, returned as float32 (zero diagonal)."""
    n = len(gram_matrix)
    m = np.array(gram_matrix, dtype=dtype, order="F", copy=True)
    m[np.diag_indices(n)] += l2
    potrf, potri = (lapack.dpotrf, lapack.dpotri) if dtype == np.float64 else (lapack.spotrf, lapack.spotri)
    factor, info = potrf(m, lower=1, overwrite_a=1)
    if info != 0:
        raise ArithmeticError(f"X^T X + {l2:g} I is not positive definite (LAPACK potrf info {info})")
    inverse, info = potri(factor, lower=1, overwrite_c=1)
    del factor, m
    lower = np.tril(inverse).astype(np.float32)  # potri fills the lower triangle only
    del inverse
    full = lower + np.tril(lower, -1).T
    del lower
    full /= -np.diag(full).copy()[None, :]
    np.fill_diagonal(full, 0.0)
    return full


def choose_l2(train: Interactions, seed: int, weighted: bool) -> tuple[float, dict[str, list[float]]]:
    """The l2 whose B ranks the validation ratings best, and every tried value with its ndcg@10."""
    held = per_user_mask(train.users, VALIDATION_FRACTION, np.random.default_rng(seed))
    fit = UserItems.from_pairs(train.users[~held], train.items[~held], train.n_users, train.ratings[~held])
    target = UserItems.from_pairs(train.users[held], train.items[held], train.n_users)
    scale = float(np.mean(np.square(train.ratings))) if weighted and len(train.ratings) else 1.0
    grid = tuple(scale * l2 for l2 in L2_GRID)
    readers = np.flatnonzero(target.counts() > 0)
    if len(readers) == 0:
        return grid[1], {}
    readers = np.sort(np.random.default_rng(seed).permutation(readers)[:VALIDATION_READERS])
    fit_gram = gram(fit, train.n_items, weighted)
    validation = _Validation(fit, target, readers, train.n_items, weighted)
    tried: dict[float, float] = {}

    def score(l2: float) -> float:
        if l2 not in tried:
            tried[l2] = validation.ndcg(item_item(fit_gram, l2, np.float32))
            logger.info("ease l2 %g: validation ndcg@%d %.4f", l2, VALIDATION_K, tried[l2])
        return tried[l2]

    best = max(grid, key=score)
    best = max((best, _refinement(best, grid, tried)), key=score)
    order = sorted(tried)
    return best, {"l2": order, f"validation_ndcg@{VALIDATION_K}": [round(tried[v], 6) for v in order]}


def _refinement(best: float, grid: tuple[float, ...], tried: dict[float, float]) -> float:
    """The l2 halfway (by a factor of 2) from the coarse best toward its better coarse neighbour (outward at an edge)."""
    lower = [v for v in grid if v < best]
    upper = [v for v in grid if v > best]
    if not lower:
        return best / 2
    if not upper:
        return best * 2
    return best * 2 if tried[upper[0]] > tried[lower[-1]] else best / 2


class _Validation:
    """The validation readers' fit rows, the books they exclude and their held-out books, gathered once for every l2."""

    def __init__(self, fit: UserItems, target: UserItems, readers: np.ndarray, n_items: int, weighted: bool) -> None:
        self.rows = reader_rows(fit, n_items, weighted, np.float32)[readers]
        self.exclude = fit.rows(readers)
        self.relevant = UserItems.from_pairs(*target.rows(readers), len(readers))
        self.n_items = n_items

    def ndcg(self, matrix: np.ndarray) -> float:
        """ndcg@10 of the readers' held-out books, ranked by their fit books times `matrix`, fit books excluded."""
        top = top_k_from_scores(np.asarray(self.rows @ matrix), VALIDATION_K, *self.exclude)
        return float(ranking_metrics(top, self.relevant, self.n_items, self.relevant.counts())[f"ndcg@{VALIDATION_K}"])


def prune(matrix: np.ndarray, keep: int, served: ItemItemWeights) -> ItemItemWeights:
    """`served` with B, each column cut to its `keep` largest entries by magnitude, in CSR form by source book."""
    n = len(matrix)
    keep = min(keep, n)
    sources, targets = [], []
    for start in range(0, n, PRUNE_CHUNK):
        block = np.abs(matrix[:, start : start + PRUNE_CHUNK])
        best = np.argpartition(-block, keep - 1, axis=0)[:keep]  # [keep, columns]: source rows kept per column
        sources.append(best.T.ravel())
        targets.append(np.repeat(np.arange(start, start + block.shape[1]), keep))
    source, target = np.concatenate(sources), np.concatenate(targets)
    order = np.lexsort((target, source))
    source, target = source[order], target[order]
    values = matrix[source, target]
    nonzero = values != 0  # the diagonal
    source, target, values = source[nonzero], target[nonzero], values[nonzero]
    splits = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(source, minlength=n), out=splits[1:])
    return replace(served, row_splits=splits, columns=target.astype(np.int32), values=values)


def memory(n_users: int, n_items: int, params: dict) -> int:
    """The float64 system and its factor, the float32 B and its temporaries: about 28 bytes per book pair."""
    return 28 * n_items * n_items


SPEC = ModelSpec(
    kind="ease",
    task=RANKING,
    feed="closed-form",
    defaults={"l2": None, "weighting": "binary", "keep": 1000, "dense_max": None},
    memory=memory,
    solve=solve,
    description="book-book linear autoencoder solved in closed form (EASE, Steck 2019), l2 chosen on validation: "
    "trained to rank, served as the item-item matrix",
)
