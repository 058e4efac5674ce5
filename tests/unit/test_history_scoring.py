"""`SavedModelScorer.recommend_history`: readers scored from their books, checked against the formula in numpy.

A small module with random weights (no training) is enough: the round trip against a trained Keras
model is tests/unit/test_serving.py's.
"""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.shared.errors import ValidationError
from bookrec.worker.learn import export
from bookrec.worker.learn.models.base import EncoderWeights, FactorizedWeights
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


def test_a_model_scoring_by_user_index_only_has_no_history_scoring() -> None:
    scorer = SavedModelScorer(export.serving_module(SCORING), fallback=None)

    assert not scorer.history_based
    with pytest.raises(ValidationError, match="no recommend_history signature"):
        scorer.recommend_history(np.array([0]), np.array([0]), 1, 3)


def test_a_trained_default_version_serves_the_history_signature(runtime) -> None:
    assert "recommend_history" in runtime.module.signatures
    assert SavedModelScorer(runtime.module, fallback=None).history_based
