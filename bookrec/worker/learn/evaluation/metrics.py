"""Offline accuracy metrics: rating error, and top-k ranking quality in index space.

Rating metrics, over every scored row:
    rmse = sqrt(mean((predicted - truth)^2)),  mae = mean(|predicted - truth|).

Ranking metrics, for row r of `top` (k recommended item indices, best first, -1 = no item) and
the set rel(r) of items relevant to that row. n_r = |rel(r)| also counts relevant items outside
the catalogue: they can never be hit, so they lower recall, ndcg and map as they should.
    hit[r, j]  = 1 if top[r, j] is in rel(r) else 0          (position j = 0..k-1 is rank j + 1)
    precision  = sum_j hit[r, j] / k
    recall     = sum_j hit[r, j] / n_r
    ndcg       = DCG / IDCG, DCG = sum_j hit[r, j] / log2(j + 2),
                 IDCG = sum_{j < min(n_r, k)} 1 / log2(j + 2)          (binary gains)
    map        = sum_j hit[r, j] * precision@(j + 1) / min(n_r, k)
    coverage   = |distinct items in top, over evaluated rows| / n_items
Rows with n_r = 0 are not evaluated; the others' values are averaged with equal weight.
"""

from __future__ import annotations

import numpy as np

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import UserItems


def rating_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Root mean squared error and mean absolute error of predicted ratings: {"rmse", "mae"}.

    Raises:
        ValidationError: the arrays are empty, not 1-D, or of different lengths.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if predicted.ndim != 1 or predicted.shape != truth.shape or len(truth) == 0:
        raise ValidationError(
            "rating metrics need two non-empty 1-D arrays of one length, "
            f"got shapes {predicted.shape} and {truth.shape}"
        )
    error = predicted - truth
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def ranking_metrics(
    top: np.ndarray, relevant: UserItems, n_items: int, n_relevant: np.ndarray | None = None
) -> dict[str, float]:
    """Precision, recall, NDCG, MAP and catalogue coverage at k = top.shape[1] (see the module docstring).

    Args:
        top: int array [n_rows, k] of distinct item indices per row, best first, -1 for no item.
        relevant: the relevant catalogue items of each row of `top` (relevant.n_users == n_rows).
        n_items: catalogue size, the denominator of coverage.
        n_relevant: per row, the number of relevant items including those outside the catalogue;
            defaults to relevant.counts().

    Returns:
        {"precision@k", "recall@k", "ndcg@k", "map@k", "coverage@k"} with k filled in.

    Raises:
        ValidationError: inconsistent shapes or indices, repeated items in a row, or no row with a
            relevant item.
    """
    top = np.asarray(top)
    n_relevant = relevant.counts() if n_relevant is None else np.asarray(n_relevant, dtype=np.int64)
    _check_ranking_inputs(top, relevant, n_items, n_relevant)
    evaluated = n_relevant > 0
    if not evaluated.any():
        raise ValidationError("no row has a relevant item, so ranking metrics are undefined")
    k = top.shape[1]
    hit = _hits(top, relevant, n_items)[evaluated].astype(np.float64)
    top, n_relevant = top[evaluated], n_relevant[evaluated]
    ideal_hits = np.minimum(n_relevant, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    precision_at_rank = np.cumsum(hit, axis=1) / np.arange(1, k + 1)
    return {
        f"precision@{k}": float(np.mean(hit.sum(axis=1) / k)),
        f"recall@{k}": float(np.mean(hit.sum(axis=1) / n_relevant)),
        f"ndcg@{k}": float(np.mean((hit @ discount) / np.cumsum(discount)[ideal_hits - 1])),
        f"map@{k}": float(np.mean((hit * precision_at_rank).sum(axis=1) / ideal_hits)),
        f"coverage@{k}": len(np.unique(top[top >= 0])) / n_items,
    }


def _check_ranking_inputs(top: np.ndarray, relevant: UserItems, n_items: int, n_relevant: np.ndarray) -> None:
    """Raise ValidationError unless top, relevant and n_relevant describe the same rows consistently."""
    if top.ndim != 2 or top.shape[1] < 1 or not np.issubdtype(top.dtype, np.integer):
        raise ValidationError(f"top must be a 2-D integer array with k >= 1 columns, got {top.dtype} {top.shape}")
    if n_items < 1:
        raise ValidationError(f"n_items must be at least 1, got {n_items}")
    if relevant.n_users != len(top) or n_relevant.shape != (len(top),):
        raise ValidationError(
            f"top has {len(top)} rows but relevant has {relevant.n_users} and n_relevant has shape {n_relevant.shape}"
        )
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValidationError(f"top holds item indices outside -1..{n_items - 1}")
    if len(relevant.indices) and relevant.indices.max() >= n_items:
        raise ValidationError(f"relevant holds item indices outside 0..{n_items - 1}")
    if np.any(n_relevant < relevant.counts()):
        raise ValidationError("n_relevant is smaller than the number of relevant catalogue items in some row")
    ordered = np.sort(top, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        raise ValidationError("top repeats an item within a row")


def _hits(top: np.ndarray, relevant: UserItems, n_items: int) -> np.ndarray:
    """Boolean [n_rows, k]: whether top[r, j] is one of row r's relevant items."""
    # Encode (row, item) pairs as row * n_items + item so one membership test covers every row.
    relevant_rows = np.repeat(np.arange(relevant.n_users, dtype=np.int64), relevant.counts())
    relevant_keys = relevant_rows * n_items + relevant.indices
    top_keys = np.arange(len(top), dtype=np.int64)[:, None] * n_items + top
    return (top >= 0) & np.isin(top_keys, relevant_keys)
