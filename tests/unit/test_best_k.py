"""`export.best_k`, the serving graphs' top-k, returns exactly what `tf.math.top_k` does: the same books in the
same order, ties to the lower column, masked (-inf) books last, whether it looks inside blocks or not."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bookrec.worker.learn.export import TOP_K_BLOCK, best_k

traced = tf.function(best_k)  # as the SavedModel's signatures run it: in a graph


def _scores(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Scores with many ties (rounded to a few levels) and some masked books."""
    scores = np.round(rng.normal(size=(rows, cols)), 1).astype(np.float32)
    scores[rng.random((rows, cols)) < 0.2] = -np.inf
    return scores


@pytest.mark.parametrize(
    "cols, k",
    [
        (10_000, 10),  # blocks
        (10_000, 39),  # blocks, k * block * 2 just under the row length
        (10_000, 40),  # whole rows
        (2 * TOP_K_BLOCK * 3 + 1, 3),  # blocks, the last one padded
        (300, 10),  # whole rows
        (50, 80),  # k above the row length: capped
    ],
)
def test_best_k_is_tf_top_k(cols: int, k: int) -> None:
    scores = _scores(np.random.default_rng(cols + k), 64, cols)
    values, items = traced(tf.constant(scores), tf.constant(k, tf.int32))
    want_values, want_items = tf.math.top_k(scores, k=min(k, cols))
    np.testing.assert_array_equal(items.numpy(), want_items.numpy())
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())


def test_best_k_of_rows_all_masked_pads_with_minus_infinity() -> None:
    scores = np.full((3, 5_000), -np.inf, dtype=np.float32)
    scores[0, 4_321] = 1.0
    values, items = traced(tf.constant(scores), tf.constant(5, tf.int32))
    assert items.numpy()[0, 0] == 4_321
    assert np.isneginf(values.numpy()[0, 1:]).all() and np.isneginf(values.numpy()[1:]).all()
