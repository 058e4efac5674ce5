"""Rating and ranking metrics against values computed by hand on tiny examples."""

import math

import numpy as np
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn.data import UserItems
from bookrec.worker.learn.evaluation.baselines import top_k_from_scores
from bookrec.worker.learn.evaluation.metrics import ranking_metrics, rating_metrics

LOG2_3 = math.log2(3)


def relevant_sets(*rows: list[int]) -> UserItems:
    """UserItems whose row r holds the items rows[r]."""
    users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    return UserItems.from_pairs(users, items, len(rows))


def test_rating_metrics_by_hand():
    # errors [-1, 0, 2]: mse = (1 + 0 + 4) / 3 = 5/3, mae = (1 + 0 + 2) / 3 = 1
    metrics = rating_metrics(np.array([3.0, 4.0, 5.0]), np.array([4.0, 4.0, 3.0]))
    assert metrics["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert metrics["mae"] == pytest.approx(1.0)


@pytest.mark.parametrize("predicted, truth", [([], []), ([1.0, 2.0], [1.0])])
def test_rating_metrics_reject_empty_or_mismatched(predicted, truth):
    with pytest.raises(ValidationError, match="1-D arrays"):
        rating_metrics(np.array(predicted), np.array(truth))


def test_ranking_metrics_by_hand():
    # k = 3, n_items = 10.
    top = np.array(
        [
            [2, 5, 7],  # relevant {5, 9}: hits [0, 1, 0]
            [1, 3, -1],  # relevant {1} + 1 outside the catalogue (n = 2): hits [1, 0, 0]
            [0, 1, 2],  # nothing relevant: not evaluated, its items do not count for coverage
            [4, 6, 8],  # relevant {4, 6, 8, 9}: hits [1, 1, 1]
        ]
    )
    relevant = relevant_sets([5, 9], [1], [], [4, 6, 8, 9])
    n_relevant = np.array([2, 2, 0, 4])
    metrics = ranking_metrics(top, relevant, n_items=10, n_relevant=n_relevant)
    # precision: (1/3 + 1/3 + 3/3) / 3 = 5/9
    assert metrics["precision@3"] == pytest.approx(5 / 9)
    # recall: (1/2 + 1/2 + 3/4) / 3 = 7/12
    assert metrics["recall@3"] == pytest.approx(7 / 12)
    # ndcg: row 0 = (1/log2 3) / (1 + 1/log2 3); row 1 = 1 / (1 + 1/log2 3); row 3 = 1 (IDCG over min(4, 3))
    ideal_two = 1 + 1 / LOG2_3
    assert metrics["ndcg@3"] == pytest.approx(((1 / LOG2_3) / ideal_two + 1 / ideal_two + 1) / 3)
    # map: row 0 = (1/2) / min(2, 3) = 1/4; row 1 = (1/1) / 2 = 1/2; row 3 = (1 + 1 + 1) / 3 = 1
    assert metrics["map@3"] == pytest.approx((1 / 4 + 1 / 2 + 1) / 3)
    # coverage: {2, 5, 7, 1, 3, 4, 6, 8} = 8 of 10 items
    assert metrics["coverage@3"] == pytest.approx(0.8)


def test_fewer_relevant_items_than_k_and_hits_late_in_the_list():
    # k = 4, relevant {1, 3, 9} (n = 3 < k), top [0, 1, 2, 3]: hits at ranks 2 and 4.
    metrics = ranking_metrics(np.array([[0, 1, 2, 3]]), relevant_sets([1, 3, 9]), n_items=10)
    assert metrics["precision@4"] == pytest.approx(2 / 4)
    assert metrics["recall@4"] == pytest.approx(2 / 3)
    # DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4) (3 relevant items, not 4)
    dcg = 1 / LOG2_3 + 1 / math.log2(5)
    assert metrics["ndcg@4"] == pytest.approx(dcg / (1 + 1 / LOG2_3 + 1 / 2))
    # AP = (precision@2 + precision@4) / min(3, 4) = (1/2 + 2/4) / 3 = 1/3
    assert metrics["map@4"] == pytest.approx(1 / 3)


def test_relevant_item_outside_catalogue_lowers_recall_ndcg_and_map():
    # relevant = {4} in the catalogue + 1 unknown item; the list hits item 4 first.
    top = np.array([[4, 0]])
    inside_only = ranking_metrics(top, relevant_sets([4]), n_items=5)
    with_unknown = ranking_metrics(top, relevant_sets([4]), n_items=5, n_relevant=np.array([2]))
    assert inside_only["recall@2"] == 1.0 and inside_only["ndcg@2"] == 1.0 and inside_only["map@2"] == 1.0
    assert with_unknown["recall@2"] == pytest.approx(1 / 2)
    assert with_unknown["ndcg@2"] == pytest.approx(1 / (1 + 1 / LOG2_3))  # IDCG over 2 relevant items
    assert with_unknown["map@2"] == pytest.approx(1 / 2)  # precision@1 / min(2, 2)
    assert with_unknown["precision@2"] == inside_only["precision@2"] == pytest.approx(1 / 2)


def test_tied_scores_rank_the_lower_index_first():
    # scores of items 0..4: [1, 3, 3, 0, 3]; items 1, 2, 4 tie, so top-2 is [1, 2].
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    top = top_k_from_scores(scores, 2, np.array([], dtype=int), np.array([], dtype=int))
    assert top.tolist() == [[1, 2]]
    # relevant {2, 4}: hit at rank 2 only; ndcg = (1/log2 3) / (1 + 1/log2 3), precision 1/2
    metrics = ranking_metrics(top, relevant_sets([2, 4]), n_items=5)
    assert metrics["ndcg@2"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    assert metrics["precision@2"] == pytest.approx(1 / 2)


def test_top_k_from_scores_skips_excluded_items_and_pads_short_lists():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    # row 0 excludes item 1; row 1 excludes all but items 3 and 4
    top = top_k_from_scores(scores, 3, np.array([0, 1, 1, 1]), np.array([1, 0, 1, 2]))
    assert top.tolist() == [[2, 4, 0], [3, 4, -1]]
    assert top.dtype == np.int32
    assert top_k_from_scores(scores[:1], 7, np.array([0]), np.array([1])).tolist() == [[2, 4, 0, 3, -1, -1, -1]]


def test_top_k_from_scores_matches_a_full_stable_sort():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float32)  # many ties
    rows, items = rng.integers(0, 50, 200), rng.integers(0, 30, 200)
    masked = scores.copy()
    masked[rows, items] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :8]
    assert np.array_equal(top_k_from_scores(scores, 8, rows, items), expected)


def test_ranking_metrics_reject_repeated_items_and_mismatched_rows():
    with pytest.raises(ValidationError, match="repeats an item"):
        ranking_metrics(np.array([[1, 1]]), relevant_sets([1]), n_items=3)
    with pytest.raises(ValidationError, match="rows"):
        ranking_metrics(np.array([[1, 2]]), relevant_sets([1], [2]), n_items=3)
    with pytest.raises(ValidationError, match="no row has a relevant item"):
        ranking_metrics(np.array([[1, 2]]), relevant_sets([]), n_items=3)
