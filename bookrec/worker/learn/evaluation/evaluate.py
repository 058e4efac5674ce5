"""Honest offline evaluation of a scorer on a held-out split, beside the baselines it must beat.

Rating error is measured on every test row: rows whose user or item is unknown to train are
scored with the scorer's fallback and counted, never dropped. Ranking quality is measured for
every test user: the relevant items are the user's test items (unknown items count in the
denominator but can never be hit); the candidates are all catalogue items the user did not rate
in train; users unknown to train are ranked by a fallback scorer (popularity by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator, Protocol

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import Interactions, UserItems
from bookrec.worker.learn.evaluation.baselines import BiasBaseline, GlobalMean, Popularity
from bookrec.worker.learn.evaluation.metrics import ranking_metrics, rating_metrics

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as progress(users_ranked, users_total) after each batch of users."""


class Scorer(Protocol):
    """What evaluation needs from a model, in index space (-1 = an id unknown to train)."""

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings (float32) for parallel index arrays; pairs holding -1 get the scorer's fallback."""
        ...

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        """[len(users), k] item indices (int32), best first, none in exclude.items_of(user), -1 as padding."""
        ...


def evaluate(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    k: int = 10,
    batch_size: int = 1024,
    progress: Progress | None = None,
    fallback: Scorer | None = None,
    test_user_ids: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Rating and top-k metrics of `scorer` on `test`, with candidates restricted to items unseen in `train`.

    Args:
        scorer: the model under evaluation; its top_k is called with known user indices only.
        train, test: indexed with the same id maps, built from the train frame alone.
        k: list length; the ranking metric names carry it (e.g. "ndcg@10").
        batch_size: users per top_k call.
        progress: called after each batch (see `Progress`).
        fallback: ranks users unknown to train; defaults to Popularity(train).
        test_user_ids: original user id of each test row. Required when some test user is unknown
            to train, since all such users share index -1 and only these ids tell them apart.

    Returns:
        {"rmse", "mae", "precision@k", "recall@k", "ndcg@k", "map@k", "coverage@k", "test_rows",
        "test_users" (users ranked), "unknown_users" (of those, ranked by the fallback),
        "unknown_user_rows", "unknown_item_rows"}.

    Raises:
        ValidationError: bad k or batch_size, an empty test set, maps that differ between train and
            test, missing test_user_ids, or a scorer that returns the wrong shape or non-finite ratings.
    """
    _check_split(train, test, k, batch_size)
    predicted = _predict_all(scorer, test)
    users = _ranked_users(test, test_user_ids)
    fallback = Popularity(train) if fallback is None else fallback
    top = _rank(scorer, fallback, users, k, train.by_user(), batch_size, progress)
    relevant = UserItems.from_pairs(users.row_of_test_row, test.items, users.n_ranked)
    rows_with_unknown_item = users.row_of_test_row[test.items < 0]
    n_relevant = relevant.counts() + np.bincount(rows_with_unknown_item, minlength=users.n_ranked)
    metrics = {
        **rating_metrics(predicted, test.ratings),
        **ranking_metrics(top, relevant, train.n_items, n_relevant),
        "test_rows": len(test),
        "test_users": users.n_ranked,
        "unknown_users": users.n_unknown,
        "unknown_user_rows": int(np.sum(test.users < 0)),
        "unknown_item_rows": int(np.sum(test.items < 0)),
    }
    logger.info("evaluated %s: %s", type(scorer).__name__, metrics)
    return metrics


def evaluate_with_baselines(
    scorer: Scorer,
    train: Interactions,
    test: Interactions,
    k: int = 10,
    batch_size: int = 1024,
    test_user_ids: np.ndarray | None = None,
) -> tuple[dict[str, float | int], dict[str, dict[str, float | int]]]:
    """`evaluate` for `scorer` and for each baseline fitted on `train`, on the same split.

    Returns:
        (scorer metrics, {"global_mean": ..., "bias": ..., "popularity": ...}).
    """
    popularity = Popularity(train)
    baselines: dict[str, Scorer] = {
        "global_mean": GlobalMean(train),
        "bias": BiasBaseline(train),
        "popularity": popularity,
    }
    options = {"k": k, "batch_size": batch_size, "fallback": popularity, "test_user_ids": test_user_ids}
    return (
        evaluate(scorer, train, test, **options),
        {name: evaluate(baseline, train, test, **options) for name, baseline in baselines.items()},
    )


def _check_split(train: Interactions, test: Interactions, k: int, batch_size: int) -> None:
    """Raise ValidationError unless the split and the options can be evaluated."""
    if k < 1 or batch_size < 1:
        raise ValidationError(f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}")
    if len(test) == 0:
        raise ValidationError("the test set is empty: nothing to evaluate")
    if (train.n_users, train.n_items) != (test.n_users, test.n_items):
        raise ValidationError(
            "train and test were indexed with different id maps: "
            "build the maps from the train frame and index both frames with them"
        )


@dataclass(frozen=True)
class _RankedUsers:
    """Who is ranked: known users in index order, then users unknown to train; and each test row's rank row."""

    known: np.ndarray  # int32 user indices
    n_unknown: int
    row_of_test_row: np.ndarray  # int64, one per test row

    @property
    def n_ranked(self) -> int:
        return len(self.known) + self.n_unknown


def _ranked_users(test: Interactions, test_user_ids: np.ndarray | None) -> _RankedUsers:
    """Every user with a test row, known or not; raise ValidationError if unknown users cannot be told apart."""
    known = test.users >= 0
    known_users = np.unique(test.users[known]).astype(np.int32)
    rows = np.empty(len(test), dtype=np.int64)
    rows[known] = np.searchsorted(known_users, test.users[known])
    if known.all():
        return _RankedUsers(known_users, 0, rows)
    if test_user_ids is None or len(test_user_ids) != len(test):
        raise ValidationError(
            f"{np.sum(~known)} test rows belong to users unknown to train: pass test_user_ids "
            "(the test frame's user column) so each of those users is ranked on its own"
        )
    codes, uniques = pd.factorize(np.asarray(test_user_ids, dtype=object)[~known])
    rows[~known] = len(known_users) + codes
    return _RankedUsers(known_users, len(uniques), rows)


def _predict_all(scorer: Scorer, test: Interactions) -> np.ndarray:
    """The scorer's rating for every test row; raise ValidationError if any is missing or not finite."""
    predicted = np.asarray(scorer.predict(test.users, test.items), dtype=np.float64)
    if predicted.shape != (len(test),) or not np.isfinite(predicted).all():
        raise ValidationError(
            f"{type(scorer).__name__}.predict must return one finite rating per test row, including rows with "
            f"unknown users or items; got shape {predicted.shape}"
        )
    return predicted


def _rank(
    scorer: Scorer,
    fallback: Scorer,
    users: _RankedUsers,
    k: int,
    exclude: UserItems,
    batch_size: int,
    progress: Progress | None,
) -> np.ndarray:
    """[n_ranked, k] top-k lists: known users from `scorer`, then unknown users from `fallback`."""
    unknown = np.full(users.n_unknown, -1, dtype=np.int32)
    batches = chain(
        _top_k_batches(scorer, users.known, k, exclude, batch_size),
        _top_k_batches(fallback, unknown, k, exclude, batch_size),
    )
    tops, done = [np.empty((0, k), dtype=np.int32)], 0
    for top in batches:
        tops.append(top)
        done += len(top)
        if progress is not None:
            progress(done, users.n_ranked)
    return np.vstack(tops)


def _top_k_batches(
    scorer: Scorer, users: np.ndarray, k: int, exclude: UserItems, batch_size: int
) -> Iterator[np.ndarray]:
    """The scorer's top-k lists for `users`, one checked int32 [batch, k] array per batch."""
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        top = np.asarray(scorer.top_k(batch, k, exclude))
        if top.shape != (len(batch), k):
            raise ValidationError(
                f"{type(scorer).__name__}.top_k returned shape {top.shape}, expected {(len(batch), k)}"
            )
        yield top.astype(np.int32)
