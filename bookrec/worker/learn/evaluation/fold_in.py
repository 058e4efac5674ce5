"""Fold-in evaluation: readers the model never trained on, ranked from their first ratings with no retraining.

A random `holdout_frac` of the readers is held out entirely; the model trains on the other readers'
ratings. Each held-out reader's ratings are put in time order (the frame's `timestamp` column when it
has one, ties and frames without it in row order, which is file order), and split as the per-user split
counts: the last n_target = min(n - 1, floor(n * target_frac + 0.5)) ratings are the target, the ones
before are the history the ranker is given. A reader with one rating has no target and is not ranked.

The ranker sees each reader's history books known to train (others are dropped) and must rank the
target books among every catalogue book outside that history; target books unknown to train count in
the denominator of recall, ndcg and map but can never be hit, as in `evaluate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import IdMap, UserItems
from bookrec.worker.learn.evaluation.metrics import ranking_metrics

logger = logging.getLogger(__name__)

BY_TIME = "timestamp"
BY_ROW = "file order"


class HistoryRanker(Protocol):
    """What fold-in evaluation needs: top-k lists for readers given only their books (index space)."""

    def top_k_from_history(
        self, items: np.ndarray, rows: np.ndarray, ratings: np.ndarray, n_readers: int, k: int
    ) -> np.ndarray:
        """[n_readers, k] item indices (int32), best first, none of reader r's books (items[rows == r], rated
        ratings[rows == r]), -1 pads."""
        ...


@dataclass(frozen=True)
class FoldInSplit:
    """Training readers' ratings, and the held-out readers' history and target ratings."""

    train: pd.DataFrame
    history: pd.DataFrame
    target: pd.DataFrame
    ordered_by: str  # BY_TIME or BY_ROW: how the held-out readers' ratings were put in order


def split_fold_in(
    frame: pd.DataFrame, holdout_frac: float = 0.2, target_frac: float = 0.25, seed: int = 0
) -> FoldInSplit:
    """Hold out round(n_readers * holdout_frac) random readers and split each one's ratings in time order.

    Args:
        frame: ratings with columns user, item, rating and optionally timestamp.
        holdout_frac, target_frac: strictly between 0 and 1 (see the module docstring).
        seed: the same seed and frame give the same split.

    Raises:
        ValidationError: a fraction outside (0, 1), or no reader left on either side.
    """
    for name, value in (("holdout_frac", holdout_frac), ("target_frac", target_frac)):
        if not 0.0 < value < 1.0:
            raise ValidationError(f"{name} must be strictly between 0 and 1, got {value!r}")
    readers = pd.unique(frame["user"])
    held = np.random.default_rng(seed).permutation(len(readers))[: round(len(readers) * holdout_frac)]
    if len(held) in (0, len(readers)):
        raise ValidationError(
            f"holding out {holdout_frac} of {len(readers)} readers leaves no reader to train on or to hold out"
        )
    is_held = frame["user"].isin(readers[held]).to_numpy()
    ordered_by = BY_TIME if "timestamp" in frame.columns else BY_ROW
    held_frame = frame[is_held]
    if ordered_by == BY_TIME:
        held_frame = held_frame.sort_values("timestamp", kind="stable")
    in_target = _last_of_each_reader(held_frame["user"], target_frac)
    return FoldInSplit(
        train=frame[~is_held].reset_index(drop=True),
        history=held_frame[~in_target].reset_index(drop=True),
        target=held_frame[in_target].reset_index(drop=True),
        ordered_by=ordered_by,
    )


def _last_of_each_reader(users: pd.Series, target_frac: float) -> np.ndarray:
    """A mask of each reader's last min(n - 1, floor(n * target_frac + 0.5)) rows, in the order given."""
    codes, _ = pd.factorize(users)
    counts = np.bincount(codes)
    n_target = np.minimum(counts - 1, np.floor(counts * target_frac + 0.5).astype(np.int64))
    position = pd.Series(codes).groupby(codes).cumcount().to_numpy()
    return position >= (counts - n_target)[codes]


def evaluate_fold_in(
    ranker: HistoryRanker, split: FoldInSplit, item_map: IdMap, k: int = 10, batch_size: int = 1024
) -> dict[str, float | int | str]:
    """Top-k metrics of `ranker` on the held-out readers with a target, given their histories.

    Args:
        ranker: called once per batch of readers with their known history books.
        split: from `split_fold_in`; `item_map` is the item map of the model trained on `split.train`.
        k, batch_size: list length; readers per ranker call.

    Returns:
        `ranking_metrics` at k plus "readers" (ranked), "history_rows" (known history books given),
        "empty_histories" (readers with no known history book), "unknown_target_rows", "ordered_by".

    Raises:
        ValidationError: bad k or batch_size, no held-out reader with a target, or a ranker returning
            the wrong shape.
    """
    if k < 1 or batch_size < 1:
        raise ValidationError(f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}")
    if split.target.empty:
        raise ValidationError("no held-out reader has a target rating: nothing to evaluate")
    target_rows, readers = pd.factorize(split.target["user"])
    history_rows = pd.Index(readers).get_indexer(split.history["user"])
    history_items = item_map.index(split.history["item"])
    known = (history_rows >= 0) & (history_items >= 0)
    history = UserItems.from_pairs(
        history_rows[known], history_items[known], len(readers), split.history["rating"].to_numpy()[known]
    )
    top = np.vstack([_ranked(ranker, history, start, k, batch_size) for start in range(0, len(readers), batch_size)])
    target_items = item_map.index(split.target["item"])
    relevant = UserItems.from_pairs(target_rows, target_items, len(readers))
    n_relevant = relevant.counts() + np.bincount(target_rows[target_items < 0], minlength=len(readers))
    metrics = {
        **ranking_metrics(top, relevant, len(item_map), n_relevant),
        "readers": len(readers),
        "history_rows": len(history.indices),
        "empty_histories": int(np.sum(history.counts() == 0)),
        "unknown_target_rows": int(np.sum(target_items < 0)),
        "ordered_by": split.ordered_by,
    }
    logger.info("fold-in evaluated %s: %s", type(ranker).__name__, metrics)
    return metrics


def _ranked(ranker: HistoryRanker, history: UserItems, start: int, k: int, batch_size: int) -> np.ndarray:
    """The ranker's checked [batch, k] lists for the readers start..start + batch_size - 1."""
    batch = np.arange(start, min(start + batch_size, history.n_users))
    rows, items, ratings = history.rated_rows(batch)
    top = np.asarray(ranker.top_k_from_history(items, rows, ratings, len(batch), k))
    if top.shape != (len(batch), k):
        raise ValidationError(f"{type(ranker).__name__}.top_k_from_history returned {top.shape}, not {(len(batch), k)}")
    return top.astype(np.int32)
