"""Train/test splits of a ratings frame (columns user, item, rating), deterministic for a seed.

`random` holds out a uniformly random fraction of all rows: it measures rating error, and some
test users or items may be unknown to train. `per-user` holds out a fraction of each user's
ratings, so every test user also has training history: it measures top-k recommendation.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError

SPLITS = ("random", "per-user")


def split_ratings(frame: pd.DataFrame, how: str, test_frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `frame` into (train, test) frames, each with a fresh 0..n-1 index and rows in input order.

    Args:
        frame: ratings with at least a `user` column (`per-user` groups by it).
        how: `random`: round(len(frame) * test_frac) rows, chosen uniformly, go to test.
            `per-user`: each user's ratings are shuffled and
            n_test = min(n - 1, floor(n * test_frac + 0.5)) of them (n rounded half up, at least
            one kept in train) go to test; so users with a single rating stay wholly in train.
        test_frac: fraction of rows to hold out, strictly between 0 and 1.
        seed: the same seed and frame give the same split.

    Raises:
        ValidationError: unknown `how`, `test_frac` outside (0, 1), or no `user` column for `per-user`.
    """
    if how not in SPLITS:
        raise ValidationError(f"unknown split {how!r}: use one of {', '.join(SPLITS)}")
    if isinstance(test_frac, bool) or not isinstance(test_frac, Real) or not 0.0 < test_frac < 1.0:
        raise ValidationError(f"test_frac must be strictly between 0 and 1, got {test_frac!r}")
    rng = np.random.default_rng(seed)
    if how == "random":
        in_test = _random_mask(len(frame), test_frac, rng)
    else:
        if "user" not in frame.columns:
            raise ValidationError("a per-user split needs a 'user' column in the ratings frame")
        in_test = _per_user_mask(frame["user"], test_frac, rng)
    return frame[~in_test].reset_index(drop=True), frame[in_test].reset_index(drop=True)


def _random_mask(n_rows: int, test_frac: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with round(n_rows * test_frac) True entries at uniformly random positions."""
    in_test = np.zeros(n_rows, dtype=bool)
    in_test[rng.permutation(n_rows)[: round(n_rows * test_frac)]] = True
    return in_test


def _per_user_mask(users: pd.Series, test_frac: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask putting a random min(n - 1, floor(n * test_frac + 0.5)) of each user's n rows in test."""
    codes, _ = pd.factorize(users)
    counts = np.bincount(codes)
    n_test = np.minimum(counts - 1, np.floor(counts * test_frac + 0.5).astype(np.int64))
    # A random permutation, then a stable sort by user: each user's rows in random order.
    shuffled = rng.permutation(len(codes))
    order = shuffled[np.argsort(codes[shuffled], kind="stable")]
    first_of_user = np.cumsum(counts) - counts
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - first_of_user[codes[order]]
    return rank < n_test[codes]
