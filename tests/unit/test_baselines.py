"""Baseline scorers: fitted values by hand, fallbacks for unknown ids, rankings and exclusions."""

import numpy as np
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import Interactions, UserItems
from bookrec.worker.learn.evaluation.baselines import BiasBaseline, GlobalMean, Popularity, top_k_from_scores
from bookrec.worker.learn.evaluation.metrics import rating_metrics


def interactions(users, items, ratings, n_users=None, n_items=None) -> Interactions:
    users, items = np.asarray(users, dtype=np.int32), np.asarray(items, dtype=np.int32)
    return Interactions(
        users=users,
        items=items,
        ratings=np.asarray(ratings, dtype=np.float32),
        n_users=n_users or int(users.max()) + 1,
        n_items=n_items or int(items.max()) + 1,
    )


NOTHING = UserItems.from_pairs(np.empty(0, np.int32), np.empty(0, np.int32), 0)


def planted(seed: int) -> Interactions:
    """Ratings = 3.5 + user bias + item bias + small noise, 300 users x 200 items, ~20% observed."""
    rng = np.random.default_rng(seed)
    user_bias, item_bias = rng.normal(0, 0.6, 300), rng.normal(0, 0.6, 200)
    users, items = np.nonzero(rng.random((300, 200)) < 0.2)
    ratings = 3.5 + user_bias[users] + item_bias[items] + rng.normal(0, 0.3, len(users))
    return interactions(users, items, ratings, 300, 200)


def test_bias_baseline_beats_global_mean_on_planted_biases():
    data = planted(0)
    in_test = np.random.default_rng(1).random(len(data)) < 0.2
    train = interactions(data.users[~in_test], data.items[~in_test], data.ratings[~in_test], 300, 200)
    test_users, test_items, truth = data.users[in_test], data.items[in_test], data.ratings[in_test]
    bias = rating_metrics(BiasBaseline(train).predict(test_users, test_items), truth)["rmse"]
    mean = rating_metrics(GlobalMean(train).predict(test_users, test_items), truth)["rmse"]
    assert bias < 0.5 * mean  # biases explain ~0.72 of the ~0.78 spread
    assert bias < 0.4


def test_bias_baseline_one_epoch_by_hand():
    # user 0 rates item 0: 4, item 1: 2; user 1 rates item 0: 4. mean = 10/3, reg_user = reg_item = 1.
    # b_i0 = ((4 - 10/3) + (4 - 10/3)) / (1 + 2) = 4/9;  b_i1 = (2 - 10/3) / (1 + 1) = -2/3
    # b_u0 = ((4 - 10/3 - 4/9) + (2 - 10/3 + 2/3)) / (1 + 2) = (2/9 - 2/3) / 3 = -4/27
    # b_u1 = (4 - 10/3 - 4/9) / (1 + 1) = 1/9
    model = BiasBaseline(interactions([0, 0, 1], [0, 1, 0], [4, 2, 4]), reg_user=1, reg_item=1, epochs=1)
    np.testing.assert_allclose(model.item_bias, [4 / 9, -2 / 3], rtol=1e-6)
    np.testing.assert_allclose(model.user_bias, [-4 / 27, 1 / 9], rtol=1e-6)
    # known pair: 10/3 - 4/27 + 4/9; unknown user: 10/3 + b_i1; both unknown: 10/3
    predicted = model.predict(np.array([0, -1, -1]), np.array([0, 1, -1]))
    np.testing.assert_allclose(predicted, [10 / 3 - 4 / 27 + 4 / 9, 10 / 3 - 2 / 3, 10 / 3], rtol=1e-6)


def test_bias_predictions_are_clipped_to_the_train_rating_range():
    data = planted(3)
    train = interactions(data.users, data.items, np.clip(data.ratings * 1.5 - 1.75, 1, 5), 300, 200)
    model = BiasBaseline(train)
    users, items = np.repeat(np.arange(300), 200), np.tile(np.arange(200), 300)
    raw = model.mean + model.user_bias[users] + model.item_bias[items]
    assert raw.max() > 5 and raw.min() < 1  # the data can push the sum out of range
    np.testing.assert_allclose(model.predict(users, items), np.clip(raw, 1, 5), rtol=1e-6)


def test_global_mean_predicts_the_mean_everywhere_and_ranks_lowest_indices_first():
    model = GlobalMean(interactions([0, 0, 1], [0, 1, 2], [1, 2, 3]))
    assert model.predict(np.array([0, -1, 1]), np.array([-1, 2, 0])).tolist() == [2.0, 2.0, 2.0]
    seen = UserItems.from_pairs(np.array([0]), np.array([0]), 2)
    assert model.top_k(np.array([0, 1]), 2, seen).tolist() == [[1, 2], [0, 1]]


def test_popularity_ranks_the_most_rated_item_first():
    # item 2 rated 3 times, item 0 twice, item 1 once
    train = interactions([0, 1, 2, 0, 1, 2], [2, 2, 2, 0, 0, 1], [1, 1, 1, 5, 5, 3])
    model = Popularity(train)
    assert model.top_k(np.array([-1]), 3, NOTHING).tolist() == [[2, 0, 1]]
    seen = train.by_user()  # user 2 rated items 1 and 2: only item 0 is left
    assert model.top_k(np.array([2]), 3, seen).tolist() == [[0, -1, -1]]


def test_popularity_predicts_damped_item_means():
    # mean = 16/6 = 8/3; item 0 has ratings [5, 5]: (10 + 5 * 8/3) / (2 + 5) = 70/21 = 10/3
    train = interactions([0, 1, 2, 0, 1, 2], [2, 2, 2, 0, 0, 1], [1, 1, 1, 5, 5, 3])
    predicted = Popularity(train, damping=5).predict(np.array([-1, 0]), np.array([0, -1]))
    np.testing.assert_allclose(predicted, [10 / 3, 8 / 3], rtol=1e-6)


def pair_keys(pairs: UserItems, n_items: int) -> np.ndarray:
    """One int per (user, item) pair of `pairs`."""
    users = np.repeat(np.arange(pairs.n_users), pairs.counts())
    return users * n_items + pairs.indices


@pytest.mark.parametrize("make", [GlobalMean, BiasBaseline, Popularity])
def test_rated_items_are_never_recommended(make):
    train = planted(2)
    seen = train.by_user()
    top = make(train).top_k(np.arange(train.n_users), 20, seen)
    assert top.shape == (train.n_users, 20) and (top >= 0).all()
    recommended = UserItems.from_pairs(np.repeat(np.arange(train.n_users), 20), top.ravel(), train.n_users)
    assert len(np.intersect1d(pair_keys(seen, train.n_items), pair_keys(recommended, train.n_items))) == 0


@pytest.mark.parametrize("make", [GlobalMean, BiasBaseline, Popularity])
def test_top_k_equals_ranking_the_whole_catalogue_by_item_score(make):
    train = planted(4)
    model, seen, users = make(train), train.by_user(), np.arange(train.n_users)
    whole = np.broadcast_to(model.item_scores, (train.n_users, train.n_items))
    expected = top_k_from_scores(whole, 15, *seen.rows(users))
    assert np.array_equal(model.top_k(users, 15, seen), expected)


def test_baselines_reject_a_training_set_without_known_ratings():
    with pytest.raises(ValidationError, match="no rating"):
        Popularity(interactions([-1], [0], [3.0], n_users=1, n_items=1))
