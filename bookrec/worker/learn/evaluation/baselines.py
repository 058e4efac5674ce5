"""Baseline scorers a model must beat: global mean, user + item biases, and popularity.

Each is fitted in its constructor from train `Interactions` (rows with an unknown index are
ignored), predicts float32 ratings for index pairs with a fallback for index -1, and ranks items
with one score per item shared by every user, so unknown users (-1) get the same list as anyone
with nothing to exclude. All three satisfy `bookrec.worker.learn.evaluation.evaluate.Scorer`, and
`evaluation.fold_in.HistoryRanker` (readers given by their books get that list minus their books).
"""

from __future__ import annotations

import numpy as np

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import Interactions, UserItems


def top_k_from_scores(scores: np.ndarray, k: int, exclude_rows: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
    """The k best items of each row of `scores` [n_rows, n_items], best first; ties go to the lower index.

    Items at (exclude_rows[j], exclude_items[j]) and items scored -inf are never returned; where a
    row has fewer than k items left its list is padded with -1. `scores` is not modified.

    Returns:
        int32 array [n_rows, k].

    Raises:
        ValidationError: k < 1, scores not 2-D, or a NaN score.
    """
    if k < 1:
        raise ValidationError(f"k must be at least 1, got {k}")
    scores = np.asarray(scores)
    scores = np.array(scores, dtype=np.result_type(scores.dtype, np.float32))
    if scores.ndim != 2:
        raise ValidationError(f"scores must be 2-D [rows, items], got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValidationError("scores contain NaN, which cannot be ranked")
    scores[exclude_rows, exclude_items] = -np.inf
    n_rows, n_items = scores.shape
    width = min(k, n_items)
    if n_rows == 0 or width == 0:
        return np.full((n_rows, k), -1, dtype=np.int32)
    items = _best_in_index_order(scores, width)
    chosen_scores = np.take_along_axis(scores, items, axis=1)
    # Stable sort of indices that are in increasing order: equal scores keep the lower index first.
    order = np.argsort(-chosen_scores, axis=1, kind="stable")
    top = np.take_along_axis(items, order, axis=1).astype(np.int32)
    top[np.take_along_axis(chosen_scores, order, axis=1) == -np.inf] = -1
    return np.pad(top, ((0, 0), (0, k - width)), constant_values=-1)


def _best_in_index_order(scores: np.ndarray, width: int) -> np.ndarray:
    """[n_rows, width] indices of each row's `width` best scores, ties at the cut taken lowest index first."""
    partitioned = np.argpartition(scores, -width, axis=1)[:, -width:]
    cut = np.take_along_axis(scores, partitioned, axis=1).min(axis=1, keepdims=True)
    above = scores > cut
    tied = scores == cut
    still_needed = width - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= still_needed))
    return np.nonzero(chosen)[1].reshape(len(scores), width)


def _known_rows(train: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ratings as float64) of the train rows whose user and item are both known."""
    known = (train.users >= 0) & (train.items >= 0)
    if not known.any():
        raise ValidationError("cannot fit a baseline: the training set has no rating with a known user and item")
    return train.users[known], train.items[known], train.ratings[known].astype(np.float64)


def _lookup(values: np.ndarray, index: np.ndarray, default: float) -> np.ndarray:
    """values[index] where 0 <= index < len(values), `default` elsewhere (unknown ids are -1)."""
    index = np.asarray(index)
    known = (index >= 0) & (index < len(values))
    return np.where(known, values[np.where(known, index, 0)], default)


def _check_pairs(users: np.ndarray, items: np.ndarray) -> None:
    """Raise ValidationError unless users and items are parallel 1-D index arrays."""
    if np.ndim(users) != 1 or np.shape(users) != np.shape(items):
        raise ValidationError(
            f"users and items must be 1-D arrays of one length, got shapes {np.shape(users)} and {np.shape(items)}"
        )


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    """numerator / denominator, `empty` where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.full(len(numerator), empty), where=denominator > 0)


class _RanksByItemScore:
    """top_k for scorers that rank by one score per item, the same for every user (self.item_scores)."""

    item_scores: np.ndarray

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        """[len(users), k] item indices (int32) by decreasing item score, ties by lower index, none in exclude."""
        rows, items = exclude.rows(np.asarray(users))
        order = np.argsort(-self.item_scores, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        # A user's k best unseen items are among the first k + (number the user has seen) in `order`,
        # so rank positions in that prefix instead of the whole catalogue.
        width = min(len(order), k + int(np.bincount(rows, minlength=1).max()))
        seen_positions = position[items]
        in_prefix = seen_positions < width
        by_position = np.broadcast_to(-np.arange(width, dtype=np.float64), (len(users), width))
        top = top_k_from_scores(by_position, k, rows[in_prefix], seen_positions[in_prefix])
        return np.where(top >= 0, order[top], -1).astype(np.int32)

    def top_k_from_history(
        self, items: np.ndarray, rows: np.ndarray, ratings: np.ndarray, n_readers: int, k: int
    ) -> np.ndarray:
        """[n_readers, k] item indices by decreasing item score, none of reader r's books (items[rows == r]; their
        ratings do not move an item's score)."""
        history = UserItems.from_pairs(np.asarray(rows), np.asarray(items), n_readers)
        return self.top_k(np.arange(n_readers), k, history)


class GlobalMean(_RanksByItemScore):
    """A constant scorer: predicts the train mean for every pair and ranks all items equally.

    Its top-k is therefore the lowest-index items a user has not rated: a floor, not a recommender.
    (IdMap indexes items in order of first appearance, so on real files that is not a random list.)
    """

    def __init__(self, train: Interactions) -> None:
        """Fit the mean rating of `train`."""
        _, _, ratings = _known_rows(train)
        self.mean = float(ratings.mean())
        self.item_scores = np.zeros(train.n_items, dtype=np.float32)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The train mean for every (user, item) pair, known or not (float32)."""
        _check_pairs(users, items)
        return np.full(len(users), self.mean, dtype=np.float32)


class BiasBaseline(_RanksByItemScore):
    """mean + user bias + item bias, fitted by alternating regularised least squares (Surprise's BaselineOnly).

    Each epoch sets every item bias to sum(r - mean - b_u) / (reg_item + n_i), then every user bias
    to sum(r - mean - b_i) / (reg_user + n_u). An unknown user or item contributes a bias of 0.
    Predictions are clipped to the train rating range; items are ranked by item bias.
    """

    def __init__(self, train: Interactions, reg_user: float = 15.0, reg_item: float = 10.0, epochs: int = 10) -> None:
        """Fit the biases of `train` (defaults are Surprise's: reg_u=15, reg_i=10, 10 epochs)."""
        if reg_user < 0 or reg_item < 0 or epochs < 1:
            raise ValidationError(
                f"BiasBaseline needs reg_user, reg_item >= 0 and epochs >= 1, got {reg_user}, {reg_item}, {epochs}"
            )
        users, items, ratings = _known_rows(train)
        self.mean = float(ratings.mean())
        self.low, self.high = float(ratings.min()), float(ratings.max())
        residual = ratings - self.mean
        user_count = reg_user + np.bincount(users, minlength=train.n_users)
        item_count = reg_item + np.bincount(items, minlength=train.n_items)
        user_bias = np.zeros(train.n_users)
        for _ in range(epochs):
            item_bias = _ratio(np.bincount(items, residual - user_bias[users], train.n_items), item_count, 0.0)
            user_bias = _ratio(np.bincount(users, residual - item_bias[items], train.n_users), user_count, 0.0)
        self.user_bias = user_bias.astype(np.float32)
        self.item_bias = item_bias.astype(np.float32)
        self.item_scores = self.item_bias

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """mean + b_u + b_i per pair (float32), clipped to the train rating range; unknown biases are 0."""
        _check_pairs(users, items)
        raw = self.mean + _lookup(self.user_bias, users, 0.0) + _lookup(self.item_bias, items, 0.0)
        return np.clip(raw, self.low, self.high).astype(np.float32)


class Popularity(_RanksByItemScore):
    """Ranks items by their number of train ratings (ties by lower index); predicts an item's damped mean.

    The damped mean of an item is (sum of its ratings + damping * global mean) / (count + damping),
    which pulls rarely rated items toward the global mean; unknown items get the global mean.
    """

    def __init__(self, train: Interactions, damping: float = 5.0) -> None:
        """Fit item counts and damped item means of `train`."""
        if damping < 0:
            raise ValidationError(f"Popularity needs damping >= 0, got {damping}")
        _, items, ratings = _known_rows(train)
        self.mean = float(ratings.mean())
        counts = np.bincount(items, minlength=train.n_items)
        sums = np.bincount(items, ratings, train.n_items)
        self.item_mean = _ratio(sums + damping * self.mean, counts + damping, self.mean).astype(np.float32)
        self.item_scores = counts.astype(np.float32)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The damped mean of each item (float32), the global mean for unknown items; users are ignored."""
        _check_pairs(users, items)
        return _lookup(self.item_mean, items, self.mean).astype(np.float32)
