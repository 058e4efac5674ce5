"""A serving module (live or loaded from a SavedModel) seen through the evaluation `Scorer` protocol."""

from __future__ import annotations

import numpy as np

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import UserItems
from bookrec.worker.learn.evaluation.evaluate import Scorer


class SavedModelScorer:
    """Scores with the exported signatures, so evaluation measures exactly what workers serve.

    Pairs with a user or item unknown to the model get `fallback`'s rating (the `bias` baseline
    fitted on the same training data).
    """

    def __init__(self, module, fallback: Scorer) -> None:
        self.module, self.fallback = module, fallback

    @property
    def history_based(self) -> bool:
        """Whether the module scores readers from their books (has the `recommend_history` signature)."""
        return hasattr(self.module, "recommend_history")

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted stars for each pair; unknown ids (-1) get the fallback's rating."""
        users, items = np.asarray(users, np.int32), np.asarray(items, np.int32)
        out = np.asarray(self.fallback.predict(users, items), dtype=np.float32).copy()
        known = (users >= 0) & (items >= 0)
        if known.any():
            out[known] = self.module.predict(user=users[known], item=items[known])["rating"].numpy()
        return out

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        """[len(users), k] best unseen items per (known) user; -1 pads lists with fewer candidates."""
        users = np.asarray(users, np.int32)
        return self.top_k_excluding(users, k, *exclude.rows(users))

    def top_k_excluding(self, users: np.ndarray, k: int, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Like `top_k`, with the exclusions given as (batch row, item) pairs."""
        result = self.module.recommend(
            user=users, k=np.int32(k), exclude_row=rows.astype(np.int32), exclude_item=items.astype(np.int32)
        )
        return _padded(result, k)[0]

    def recommend_history(
        self, items: np.ndarray, rows: np.ndarray, n_readers: int, k: int, ratings: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best books for each of `n_readers` readers scored from their books, none of their own books.

        Args:
            items, rows: parallel 1-D integer arrays: reader rows[j] (0 <= rows[j] < n_readers) has book
                index items[j] (0 <= items[j] < n_items). Items of -1 (books unknown to the model) are
                dropped; repeats count once; a reader without pairs is scored from an empty history.
            n_readers: how many readers (rows of the result).
            k: list length, at least 1.
            ratings: each pair's rating (finite numbers, parallel to items); None rates every pair 1.

        Returns:
            (items int32 [n_readers, k] best first, -1 where fewer than k books are left;
            scores float32 [n_readers, k], -inf beside each -1).

        Raises:
            ValidationError: the model has no `recommend_history` signature (its kind scores by user index
                only), or the arrays, n_readers or k are malformed or out of range.
        """
        if not self.history_based:
            raise ValidationError("this model has no recommend_history signature: its kind scores by user index only")
        items, rows, ratings = _checked_history(items, rows, ratings, n_readers, k, self._n_items())
        known = items >= 0
        result = self.module.recommend_history(
            history_item=items[known],
            history_row=rows[known],
            history_rating=ratings[known],
            n_readers=np.int32(n_readers),
            k=np.int32(k),
        )
        return _padded(result, k)

    def top_k_from_history(
        self, items: np.ndarray, rows: np.ndarray, ratings: np.ndarray, n_readers: int, k: int
    ) -> np.ndarray:
        """The item part of `recommend_history` (the fold-in evaluation's `HistoryRanker` protocol)."""
        return self.recommend_history(items, rows, n_readers, k, ratings)[0]

    def _n_items(self) -> int:
        scoring = self.module.scoring
        if hasattr(scoring, "item_vectors"):  # a factorized head
            return int(scoring.item_vectors.shape[0])
        if getattr(scoring, "dense", None) is not None:  # an item-item head, B dense or pruned
            return int(scoring.dense.shape[0])
        return int(scoring.row_splits.shape[0]) - 1


def _padded(result: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A top-k signature's (items, scores) as numpy, widened to k columns, items -1 where the score is -inf."""
    top, scores = result["items"].numpy(), result["scores"].numpy()
    top[~np.isfinite(scores)] = -1
    if top.shape[1] < k:
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
    return top, scores


def _checked_history(
    items: np.ndarray, rows: np.ndarray, ratings: np.ndarray | None, n_readers: int, k: int, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, rows) as int32 and ratings as float32 (1 each when None) after checking them against n_readers and
    n_items; ValidationError names the problem."""
    items, rows = np.asarray(items), np.asarray(rows)
    ratings = np.ones(items.shape, np.float32) if ratings is None else np.asarray(ratings)
    if items.ndim != 1 or items.shape != rows.shape or items.shape != ratings.shape:
        raise ValidationError(
            "history items, rows and ratings must be 1-D arrays of one length, got shapes "
            f"{items.shape}, {rows.shape} and {ratings.shape}"
        )
    if ratings.size and (not np.issubdtype(ratings.dtype, np.number) or not np.isfinite(ratings).all()):
        raise ValidationError("history ratings must be finite numbers")
    if (items.size and not np.issubdtype(items.dtype, np.integer)) or (
        rows.size and not np.issubdtype(rows.dtype, np.integer)
    ):
        raise ValidationError(f"history items and rows must be integer arrays, got {items.dtype} and {rows.dtype}")
    if int(n_readers) < 0 or int(k) < 1:
        raise ValidationError(f"n_readers must be at least 0 and k at least 1, got n_readers={n_readers}, k={k}")
    if rows.size and (rows.min() < 0 or rows.max() >= n_readers):
        raise ValidationError(f"history rows must be reader rows 0..{n_readers - 1}, got {rows.min()}..{rows.max()}")
    if items.size and (items.min() < -1 or items.max() >= n_items):
        raise ValidationError(
            f"history items must be book indices 0..{n_items - 1} (or -1 for an unknown book), "
            f"got {items.min()}..{items.max()}"
        )
    return items.astype(np.int32), rows.astype(np.int32), ratings.astype(np.float32)
