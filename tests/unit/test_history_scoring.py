"""`SavedModelScorer.recommend_history`: readers scored from their books, checked against the formula in numpy.

A small module with random weights (no training) is enough: the round trip against a trained Keras
model is tests/unit/test_serving.py's.
"""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn import export
from bookrec.worker.learn.models.base import EncoderWeights, FactorizedWeights, ItemItemWeights
from bookrec.worker.learn.models.ease import dense_matrix
from bookrec.worker.learn.scoring import SavedModelScorer

N_ITEMS, DIM = 5, 3
_rng = np.random.default_rng(0)
SCORING = FactorizedWeights(
    user_vectors=_rng.normal(size=(2, DIM)).astype(np.float32),
    item_vectors=_rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
    user_bias=np.zeros(2, np.float32),
    item_bias=_rng.normal(size=N_ITEMS).astype(np.float32),
    global_bias=0.25,
)
ENCODER = EncoderWeights(
    kernel=_rng.normal(size=(N_ITEMS, DIM)).astype(np.float32), bias=_rng.normal(size=DIM).astype(np.float32)
)


@pytest.fixture(scope="module")
def scorer() -> SavedModelScorer:
    return SavedModelScorer(export.serving_module(SCORING, history=ENCODER), fallback=None)


def expected_scores(books: list[int]) -> np.ndarray:
    """The EncoderWeights formula in numpy for one reader's books, before masking."""
    row = np.zeros(N_ITEMS)
    row[books] = 1.0
    unit = row / max(np.linalg.norm(row), 1e-6)
    vector = np.tanh(unit @ ENCODER.kernel + ENCODER.bias)
    return vector @ SCORING.item_vectors.T + SCORING.item_bias + SCORING.global_bias


def test_scores_follow_the_formula_best_first_with_own_books_masked(scorer: SavedModelScorer) -> None:
    items, scores = scorer.recommend_history(np.array([1, 3, 0]), np.array([0, 0, 1]), n_readers=2, k=3)

    for row, books in enumerate([[1, 3], [0]]):
        expected = expected_scores(books)
        expected[books] = -np.inf
        order = np.argsort(-expected)[:3]
        assert items[row].tolist() == order.tolist()
        np.testing.assert_allclose(scores[row], expected[order], rtol=0, atol=1e-5)


def test_too_few_candidates_pad_with_minus_one_and_minus_infinity(scorer: SavedModelScorer) -> None:
    items, scores = scorer.recommend_history(np.array([0, 1, 2]), np.zeros(3, int), n_readers=1, k=4)

    assert sorted(items[0, :2].tolist()) == [3, 4] and items[0, 2:].tolist() == [-1, -1]
    assert np.isfinite(scores[0, :2]).all() and np.isneginf(scores[0, 2:]).all()


def test_unknown_books_and_repeats_are_ignored_and_a_reader_without_pairs_has_an_empty_history(
    scorer: SavedModelScorer,
) -> None:
    items, scores = scorer.recommend_history(np.array([2, -1, 2]), np.array([0, 0, 0]), n_readers=3, k=N_ITEMS)
    alone, alone_scores = scorer.recommend_history(np.array([2]), np.array([0]), n_readers=1, k=N_ITEMS)

    np.testing.assert_array_equal(items[:1], alone)
    np.testing.assert_allclose(scores[:1], alone_scores, rtol=0, atol=1e-6)
    for row in (1, 2):  # no pairs: every book is a candidate, scored from the empty row
        np.testing.assert_allclose(scores[row], expected_scores([])[items[row]], rtol=0, atol=1e-5)


def test_no_readers_give_empty_lists(scorer: SavedModelScorer) -> None:
    items, scores = scorer.recommend_history(np.array([], int), np.array([], int), n_readers=0, k=3)

    assert items.shape == scores.shape == (0, 3)


@pytest.mark.parametrize(
    "items, rows, n_readers, k, problem",
    [
        ([0, 1], [0], 1, 3, "1-D arrays of one length"),
        ([0.5], [0], 1, 3, "integer arrays"),
        ([0], [1], 1, 3, r"reader rows 0..0, got 1..1"),
        ([0], [-1], 1, 3, r"reader rows 0..0, got -1..-1"),
        ([N_ITEMS], [0], 1, 3, r"book indices 0..4 \(or -1 for an unknown book\), got 5..5"),
        ([-2], [0], 1, 3, "book indices 0..4"),
        ([0], [0], 1, 0, "k at least 1"),
        ([], [], -1, 3, "n_readers must be at least 0"),
    ],
)
def test_malformed_histories_are_refused_with_the_problem_named(
    scorer: SavedModelScorer, items: list, rows: list, n_readers: int, k: int, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        scorer.recommend_history(np.array(items), np.array(rows), n_readers, k)


@pytest.mark.parametrize(
    "ratings, problem", [([4.0], "one length"), ([4.0, float("nan")], "finite numbers"), (["4", "5"], "finite")]
)
def test_malformed_ratings_are_refused_with_the_problem_named(
    scorer: SavedModelScorer, ratings: list, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        scorer.recommend_history(np.array([0, 1]), np.array([0, 0]), 1, 3, np.array(ratings))


def item_item(weighted: bool, pruned: bool) -> ItemItemWeights:
    """A random 5-book B with a zero diagonal (every entry kept when `pruned`, in CSR form), no training users."""
    matrix = _rng.normal(size=(N_ITEMS, N_ITEMS)).astype(np.float32)
    np.fill_diagonal(matrix, 0.0)
    empty = (np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
    if not pruned:
        return ItemItemWeights(N_ITEMS, *empty, weighted, dense=matrix)
    source, target = np.nonzero(matrix)
    splits = np.concatenate([[0], np.cumsum(np.bincount(source, minlength=N_ITEMS))]).astype(np.int64)
    return ItemItemWeights(
        N_ITEMS, *empty, weighted, row_splits=splits, columns=target.astype(np.int32), values=matrix[source, target]
    )


@pytest.mark.parametrize(
    "weighted, pruned, levels",
    [(True, False, 16), (True, False, 2), (True, True, 16), (False, False, 16), (False, True, 16)],
    ids=["weighted-dense", "weighted-dense-many-ratings", "weighted-pruned", "binary-dense", "binary-pruned"],
)
def test_an_item_item_kind_sums_the_rows_of_its_books_times_their_ratings_when_weighted(
    weighted: bool, pruned: bool, levels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "MAX_STAR_LEVELS", levels)  # 2: more distinct ratings than that, the product path
    weights = item_item(weighted, pruned)
    dense = dense_matrix(weights)
    scorer = SavedModelScorer(export.serving_module(weights), fallback=None)
    # reader 0: book 1 at 4 stars, book 3 at 2 (given twice: counted once, at the larger); reader 1: book 0 at 0.5
    items, rows, ratings = np.array([1, 3, 0, 3]), np.array([0, 0, 1, 0]), np.array([4.0, 2.0, 0.5, 1.0])

    top, scores = scorer.recommend_history(items, rows, 2, N_ITEMS, ratings)

    stars = [{1: 4.0, 3: 2.0}, {0: 0.5}]
    for row, books in enumerate(stars):
        expected = sum((value if weighted else 1.0) * dense[book] for book, value in books.items())
        expected[list(books)] = -np.inf
        finite = np.isfinite(scores[row])
        assert finite.sum() == N_ITEMS - len(books)
        np.testing.assert_allclose(scores[row][finite], expected[top[row][finite]], rtol=0, atol=1e-5)
        assert np.all(np.diff(scores[row][finite]) <= 0)


def test_a_model_scoring_by_user_index_only_has_no_history_scoring() -> None:
    scorer = SavedModelScorer(export.serving_module(SCORING), fallback=None)

    assert not scorer.history_based
    with pytest.raises(ValidationError, match="no recommend_history signature"):
        scorer.recommend_history(np.array([0]), np.array([0]), 1, 3)


def test_a_trained_default_version_serves_the_history_signature(runtime) -> None:
    assert "recommend_history" in runtime.module.signatures
    assert SavedModelScorer(runtime.module, fallback=None).history_based
