"""Train/test splits of a ratings frame (columns user, item, rating), deterministic for a seed.

`random` holds out a uniformly random fraction of all rows: it measures rating error, and some
test users or items may be unknown to train. `per-user` holds out a fraction of each user's
ratings, so every test user also has training history: it measures top-k recommendation.

Either split can be told to keep some rows in train (`keep_in_train`): the retrain gate keeps there
every rating production trained on, so the test part holds only ratings production never saw.
`pair_keys` names a (user, item) pair by a 32-bit hash of its original ids, which a version stores
for the pairs it trained on (4 bytes a rating).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError

SPLITS = ("random", "per-user")


def pair_keys(frame: pd.DataFrame) -> np.ndarray:
    """A uint32 hash of each row's (user, item) original ids, the same in every process and run.

    Distinct pairs may share a key (about one chance in 4 billion for two given pairs); the gate then
    treats a new rating as trained on and leaves it out of the test part, which never makes it unfair.
    """
    users = pd.util.hash_array(frame["user"].astype(str).to_numpy(dtype=object))
    items = pd.util.hash_array(frame["item"].astype(str).to_numpy(dtype=object))
    both = users * np.uint64(0x9E3779B97F4A7C15) ^ items
    return ((both >> np.uint64(32)) ^ (both & np.uint64(0xFFFFFFFF))).astype(np.uint32)


def split_ratings(
    frame: pd.DataFrame, how: str, test_frac: float, seed: int, keep_in_train: np.ndarray | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split `frame` into (train, test) frames, each with a fresh 0..n-1 index and rows in input order.

    Args:
        frame: ratings with at least a `user` column (`per-user` groups by it).
        how: `random`: round(len(frame) * test_frac) rows, chosen uniformly, go to test.
            `per-user`: each user's ratings are shuffled and
            n_test = min(n - 1, floor(n * test_frac + 0.5)) of them (n rounded half up, at least
            one kept in train) go to test; so users with a single rating stay wholly in train.
        test_frac: fraction of rows to hold out, strictly between 0 and 1.
        seed: the same seed and frame give the same split.
        keep_in_train: optional boolean mask of rows that stay in train whatever the draw (the rest of the
            draw is unchanged, so test holds the drawn rows outside the mask).

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
        in_test = per_user_mask(frame["user"], test_frac, rng)
    if keep_in_train is not None:
        in_test &= ~keep_in_train
    return frame[~in_test].reset_index(drop=True), frame[in_test].reset_index(drop=True)


def _random_mask(n_rows: int, test_frac: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with round(n_rows * test_frac) True entries at uniformly random positions."""
    in_test = np.zeros(n_rows, dtype=bool)
    in_test[rng.permutation(n_rows)[: round(n_rows * test_frac)]] = True
    return in_test


def per_user_mask(users: pd.Series | np.ndarray, test_frac: float, rng: np.random.Generator) -> np.ndarray:
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
