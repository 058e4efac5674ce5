"""Train/test splits: determinism, sizes, the per-user guarantees, argument checks."""

import numpy as np
import pandas as pd
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.evaluation.splits import pair_keys, split_ratings


@pytest.fixture
def ratings() -> pd.DataFrame:
    """Users u0..u59 with 1..60 ratings each (user u{n-1} has n), ids as strings."""
    counts = np.arange(1, 61)
    users = np.repeat([f"u{i}" for i in range(60)], counts)
    items = np.concatenate([np.arange(n) for n in counts]).astype(str)
    return pd.DataFrame({"user": users, "item": items, "rating": np.ones(len(users), dtype=np.float32)})


def keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(zip(frame["user"], frame["item"]))


@pytest.mark.parametrize("how", ["random", "per-user"])
def test_split_is_deterministic_for_a_seed_and_partitions_the_rows(ratings, how):
    train, test = split_ratings(ratings, how, 0.25, seed=3)
    again_train, again_test = split_ratings(ratings, how, 0.25, seed=3)
    _, other_test = split_ratings(ratings, how, 0.25, seed=4)
    pd.testing.assert_frame_equal(test, again_test)
    pd.testing.assert_frame_equal(train, again_train)
    assert keys(test) != keys(other_test)
    assert keys(pd.concat([train, test])) == keys(ratings)
    assert list(test.index) == list(range(len(test)))


def test_random_split_holds_out_the_requested_fraction(ratings):
    train, test = split_ratings(ratings, "random", 0.2, seed=0)
    assert len(test) == round(len(ratings) * 0.2)  # 1830 rows -> 366
    assert len(train) == len(ratings) - len(test)


@pytest.mark.parametrize("test_frac", [0.25, 0.9])
def test_per_user_split_rounds_each_user_and_keeps_one_in_train(ratings, test_frac):
    train, test = split_ratings(ratings, "per-user", test_frac, seed=0)
    n = ratings.groupby("user").size()
    n_train = train.groupby("user").size().reindex(n.index, fill_value=0)
    n_test = test.groupby("user").size().reindex(n.index, fill_value=0)
    assert (n_test == np.minimum(n - 1, np.floor(n * test_frac + 0.5))).all()
    assert (n_train >= 1).all()
    assert n_test["u0"] == 0  # the one-rating user stays wholly in train


def test_per_user_split_rounds_half_up(ratings):
    _, test = split_ratings(ratings, "per-user", 0.25, seed=0)
    n_test = test.groupby("user").size()
    # u4 has 5 ratings: 1.25 -> 1; u5 has 6: 1.5 -> 2; u1 has 2: 0.5 -> 1 (leaving 1 in train)
    assert (n_test["u4"], n_test["u5"], n_test["u1"]) == (1, 2, 1)


@pytest.mark.parametrize(
    "how, test_frac", [("temporal", 0.2), ("random", 0.0), ("random", 1.0), ("per-user", 1.5), ("random", "0.2")]
)
def test_bad_arguments_are_rejected(ratings, how, test_frac):
    with pytest.raises(ValidationError):
        split_ratings(ratings, how, test_frac, seed=0)


@pytest.mark.parametrize("how", ["random", "per-user"])
def test_rows_kept_in_train_never_reach_test_and_the_rest_of_the_draw_is_unchanged(ratings, how):
    keep = np.random.default_rng(1).random(len(ratings)) < 0.5
    _, plain_test = split_ratings(ratings, how, 0.3, seed=4)

    train, test = split_ratings(ratings, how, 0.3, seed=4, keep_in_train=keep)

    kept = ratings[keep]
    pairs = lambda frame: set(zip(frame["user"], frame["item"]))  # noqa: E731
    assert not pairs(test) & pairs(kept) and pairs(kept) <= pairs(train)
    assert pairs(test) == pairs(plain_test) - pairs(kept)
    assert len(train) + len(test) == len(ratings)


def test_pair_keys_name_a_pair_by_its_ids_whatever_the_row_order_or_the_id_type():
    frame = pd.DataFrame({"user": ["1", "2", "reader-3"], "item": ["10", "20", "30"]})
    again = pd.DataFrame({"user": ["reader-3", 1, 2], "item": ["30", 10, 20]})

    keys = pair_keys(frame)

    assert keys.dtype == np.uint32 and len(set(keys.tolist())) == 3
    assert pair_keys(again).tolist() == keys[[2, 0, 1]].tolist()
    assert pair_keys(pd.DataFrame({"user": ["10"], "item": ["1"]}))[0] not in keys  # (user, item) is ordered
