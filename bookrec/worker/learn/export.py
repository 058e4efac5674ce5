"""The SavedModel that workers serve: rating prediction and whole-catalogue top-k in the graph.

`ServingModule` is a plain `tf.Module` holding the trained weights as variables, so
`tf.saved_model.load(path)` opens it with no bookrec (or Keras) code imported. Signatures:

- `predict(user, item)` -> `{"rating"}`: predicted stars for parallel int32 index arrays.
- `top_k(user, k)` -> `{"items", "scores"}`: best k items of the catalogue per user, as
  TensorFlow Recommenders' brute-force index does.
- `recommend(user, k, exclude_row, exclude_item)` -> `{"items", "scores"}`: the same, with the
  (row, item) pairs given (each user's already-rated books) masked out before top-k, so
  excluded items never take a slot. Fewer than k candidates are padded with score -inf.

History-based kinds (`ModelSpec.history_based`) also have:

- `recommend_history(history_item, history_row, history_rating, n_readers, k)` -> `{"items", "scores"}`:
  the k best books for each of `n_readers` readers scored from their books, not from a user index. Reader
  r's books are the `history_item[j]` with `history_row[j] == r`, rated `history_rating[j]` (parallel flat
  arrays, int32, int32 and float32, pairs in any order; a pair given twice counts once, at its larger rating;
  a reader with no pair has an empty history). Kinds that read 0/1 histories ignore the ratings. Each
  reader's own books are masked out before top-k; fewer than k candidates are padded with score -inf. A
  training user's books and ratings give that user's training-time scores, since the reader is encoded as
  training encoded them.

An item-item kind (`ease`) scores every signature from books: a reader's scores are the sum of the rows of B
of their books, each times its rating if B was solved on ratings (gathered, never a dense readers x books
product), and a user index stands for that user's training books and ratings, which the module holds.

`serving_default` is `predict`. Users must be known indices (0..n_users-1); the worker handles
unknown users with its popularity fallback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from bookrec.worker.learn.models.base import EncoderWeights, FactorizedWeights, ItemItemWeights, MLPWeights

_USERS = tf.TensorSpec([None], tf.int32, name="user")
_ITEMS = tf.TensorSpec([None], tf.int32, name="item")
_K = tf.TensorSpec([], tf.int32, name="k")
_EXCLUDE_ROW = tf.TensorSpec([None], tf.int32, name="exclude_row")
_EXCLUDE_ITEM = tf.TensorSpec([None], tf.int32, name="exclude_item")
_HISTORY_ITEM = tf.TensorSpec([None], tf.int32, name="history_item")
_HISTORY_ROW = tf.TensorSpec([None], tf.int32, name="history_row")
_HISTORY_RATING = tf.TensorSpec([None], tf.float32, name="history_rating")
_N_READERS = tf.TensorSpec([], tf.int32, name="n_readers")
MAX_STAR_LEVELS = 16
"""A weighted item-item head sums B's rows once per distinct rating of the batch up to this many distinct values
(star scales have 5 or 10); above it, through a sparse matrix product (about 3.5 times slower than one sum)."""
TOP_K_BLOCK = 128
"""`best_k` splits each row of scores into blocks of this many books and looks only inside the k blocks with the
largest maxima (500 readers x 10,000 books, k 10: 6.4 ms, where one top-k over whole rows takes 17.7 ms)."""


def best_k(scores: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The k largest scores of each row and their columns, best first, ties to the lower column: exactly what
    `tf.math.top_k` returns (k is capped at the row length).

    The k best books of a row lie in the k blocks whose best book ranks highest (each such book beats the best
    of every block ranked below its own), so a top-k over those blocks' books is exact.
    """
    n_rows, n_cols = tf.shape(scores)[0], tf.shape(scores)[1]
    k = tf.minimum(k, n_cols)
    n_blocks = (n_cols + TOP_K_BLOCK - 1) // TOP_K_BLOCK

    def by_blocks() -> tuple[tf.Tensor, tf.Tensor]:
        padded = tf.pad(scores, [[0, 0], [0, n_blocks * TOP_K_BLOCK - n_cols]], constant_values=float("-inf"))
        blocks = tf.reshape(padded, [n_rows, n_blocks, TOP_K_BLOCK])
        _, best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k=k)
        best = tf.sort(best, axis=1)  # candidates in column order, so ties go to the lower column
        values, at = tf.math.top_k(tf.reshape(tf.gather(blocks, best, batch_dims=1), [n_rows, -1]), k=k)
        return values, tf.gather(best, at // TOP_K_BLOCK, batch_dims=1) * TOP_K_BLOCK + at % TOP_K_BLOCK

    return tf.cond(k * TOP_K_BLOCK * 2 <= n_cols, by_blocks, lambda: tuple(tf.math.top_k(scores, k=k)))


def _var(value: np.ndarray, name: str) -> tf.Variable:
    return tf.Variable(np.asarray(value, dtype=np.float32), trainable=False, name=name)


class _Factorized(tf.Module):
    """score(u, i) = U[u] . V[i] + bu[u] + bi[i] + g."""

    def __init__(self, weights: FactorizedWeights, name: str) -> None:
        super().__init__(name=name)
        self.user_vectors = _var(weights.user_vectors, "user_vectors")
        self.item_vectors = _var(weights.item_vectors, "item_vectors")
        self.user_bias = _var(weights.user_bias, "user_bias")
        self.item_bias = _var(weights.item_bias, "item_bias")
        self.global_bias = _var(np.float32(weights.global_bias), "global_bias")

    def all_items(self, users: tf.Tensor) -> tf.Tensor:
        """[B, n_items] scores."""
        return self.score_vectors(tf.gather(self.user_vectors, users), tf.gather(self.user_bias, users))

    def score_vectors(self, vectors: tf.Tensor, user_bias: tf.Tensor) -> tf.Tensor:
        """[B, n_items] scores of B readers given by their vectors [B, dim] and biases [B]."""
        scores = tf.matmul(vectors, self.item_vectors, transpose_b=True) + self.item_bias
        return scores + (user_bias + self.global_bias)[:, None]

    def pairs(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[N] scores of parallel (user, item) pairs."""
        dot = tf.reduce_sum(tf.gather(self.user_vectors, users) * tf.gather(self.item_vectors, items), axis=-1)
        return dot + tf.gather(self.user_bias, users) + tf.gather(self.item_bias, items) + self.global_bias


class _MLP(tf.Module):
    """score(u, i) = MLP(concat(U[u], V[i])), ReLU between layers, linear output."""

    def __init__(self, weights: MLPWeights, name: str) -> None:
        super().__init__(name=name)
        self.user_vectors = _var(weights.user_vectors, "user_vectors")
        self.item_vectors = _var(weights.item_vectors, "item_vectors")
        self.kernels = [_var(k, f"kernel_{i}") for i, k in enumerate(weights.kernels)]
        self.biases = [_var(b, f"bias_{i}") for i, b in enumerate(weights.biases)]

    def _head(self, hidden: tf.Tensor) -> tf.Tensor:
        """The layers after the first, applied to first-layer pre-activations."""
        x = tf.nn.relu(hidden)
        for kernel, bias in zip(self.kernels[1:-1], self.biases[1:-1]):
            x = tf.nn.relu(tf.matmul(x, kernel) + bias)
        return tf.squeeze(tf.matmul(x, self.kernels[-1]) + self.biases[-1], axis=-1)

    def pairs(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        x = tf.concat([tf.gather(self.user_vectors, users), tf.gather(self.item_vectors, items)], axis=-1)
        return self._head(tf.matmul(x, self.kernels[0]) + self.biases[0])

    def all_items(self, users: tf.Tensor) -> tf.Tensor:
        # The first layer splits into a user part and an item part; the item part is shared by all users.
        dim = tf.shape(self.user_vectors)[1]
        user_part = tf.matmul(tf.gather(self.user_vectors, users), self.kernels[0][:dim])
        item_part = tf.matmul(self.item_vectors, self.kernels[0][dim:]) + self.biases[0]
        return tf.map_fn(
            lambda row: self._head(row[None, :] + item_part),
            user_part,
            fn_output_signature=tf.TensorSpec([None], tf.float32),
        )


class _EncodedHistory(tf.Module):
    """Readers scored from their books: vector = tanh(unit-L2 multi-hot @ kernel + bias), then a factorized head.

    The multi-hot rows are never built: a reader's row times the kernel is the sum of its books' kernel rows,
    and the row's L2 norm the square root of its number of books, so the cost grows with the books given,
    not with readers x catalogue.
    """

    def __init__(self, weights: EncoderWeights, items: _Factorized, name: str) -> None:
        super().__init__(name=name)
        self.kernel = _var(weights.kernel, "kernel")
        self.bias = _var(weights.bias, "bias")
        self.items = items

    def from_history(self, items: tf.Tensor, rows: tf.Tensor, ratings: tf.Tensor, n_readers: tf.Tensor) -> tf.Tensor:
        """[n_readers, n_items] scores of readers given as distinct (row, item) pairs, rows in ascending order
        (their ratings unused)."""
        books = tf.math.unsorted_segment_sum(tf.ones_like(items, tf.float32), rows, n_readers)
        summed = tf.sparse.segment_sum(self.kernel, items, rows, num_segments=n_readers)
        vectors = tf.tanh(summed / tf.maximum(tf.sqrt(books), 1e-6)[:, None] + self.bias)
        return self.items.score_vectors(vectors, tf.zeros([n_readers]))


class _ItemItem(tf.Module):
    """score(reader, i) = sum of w_j B[j, i] over the reader's books j (w_j their rating of j if B is weighted,
    else 1); B dense, or pruned and kept by source book."""

    def __init__(self, weights: ItemItemWeights, name: str) -> None:
        super().__init__(name=name)
        self.n_items = int(weights.n_items)
        self.weighted = bool(weights.weighted)
        self.history_splits = tf.Variable(
            weights.history_indptr.astype(np.int64), trainable=False, name="history_splits"
        )
        self.history_items = tf.Variable(weights.history_items.astype(np.int32), trainable=False, name="history_items")
        self.history_ratings = _var(weights.history_ratings, "history_ratings")
        self.dense = None if weights.dense is None else _var(weights.dense, "item_item")
        if weights.dense is None:
            self.row_splits = tf.Variable(weights.row_splits.astype(np.int64), trainable=False, name="row_splits")
            self.columns = tf.Variable(weights.columns.astype(np.int32), trainable=False, name="columns")
            self.values = _var(weights.values, "values")

    def all_items(self, users: tf.Tensor) -> tf.Tensor:
        """[B, n_items] scores of training users, from their training books and ratings."""
        books = tf.RaggedTensor.from_row_splits(self.history_items, self.history_splits, validate=False)
        ratings = tf.RaggedTensor.from_row_splits(self.history_ratings, self.history_splits, validate=False)
        mine = tf.gather(books, users)
        rows = tf.cast(mine.value_rowids(), tf.int32)
        return self.from_history(mine.values, rows, tf.gather(ratings, users).values, tf.shape(users)[0])

    def from_history(self, items: tf.Tensor, rows: tf.Tensor, ratings: tf.Tensor, n_readers: tf.Tensor) -> tf.Tensor:
        """[n_readers, n_items] scores of readers given as distinct (row, item) pairs, rows in ascending order."""
        if self.dense is None:
            return self._pruned(items, rows, ratings, n_readers)
        if not self.weighted:
            return tf.sparse.segment_sum(self.dense, items, rows, num_segments=n_readers)
        levels, level_of = tf.unique(ratings)
        return tf.cond(
            tf.size(levels) <= MAX_STAR_LEVELS,
            lambda: self._by_level(items, rows, levels, level_of, n_readers),
            lambda: self._product(items, rows, ratings, n_readers),
        )

    def _by_level(
        self, items: tf.Tensor, rows: tf.Tensor, levels: tf.Tensor, level_of: tf.Tensor, n_readers: tf.Tensor
    ) -> tf.Tensor:
        """The weighted sum as one gathered sum per distinct rating, scaled by it (TensorFlow has no weighted form
        of the op)."""

        def add_level(level: tf.Tensor, scores: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            mine = tf.equal(level_of, level)
            part = tf.sparse.segment_sum(
                self.dense, tf.boolean_mask(items, mine), tf.boolean_mask(rows, mine), num_segments=n_readers
            )
            return level + 1, scores + levels[level] * part

        _, scores = tf.while_loop(
            lambda level, _: level < tf.size(levels),
            add_level,
            (tf.constant(0), tf.zeros(tf.stack([n_readers, self.n_items]))),
        )
        return scores

    def _product(self, items: tf.Tensor, rows: tf.Tensor, ratings: tf.Tensor, n_readers: tf.Tensor) -> tf.Tensor:
        """The weighted sum as a sparse readers x books matrix times B (for ratings of many distinct values)."""
        pairs = tf.cast(tf.stack([rows, items], axis=1), tf.int64)
        shape = tf.cast(tf.stack([n_readers, self.n_items]), tf.int64)
        return tf.sparse.sparse_dense_matmul(tf.SparseTensor(pairs, ratings, shape), self.dense)

    def _pruned(self, items: tf.Tensor, rows: tf.Tensor, ratings: tf.Tensor, n_readers: tf.Tensor) -> tf.Tensor:
        """`from_history` through the pruned B: each kept entry of the readers' books' rows, scattered."""
        columns = tf.gather(tf.RaggedTensor.from_row_splits(self.columns, self.row_splits, validate=False), items)
        values = tf.gather(tf.RaggedTensor.from_row_splits(self.values, self.row_splits, validate=False), items)
        pair = columns.value_rowids()
        reader = tf.cast(tf.gather(rows, pair), tf.int64)
        cells = reader * self.n_items + tf.cast(columns.values, tf.int64)
        entries = values.values * tf.gather(ratings, pair) if self.weighted else values.values
        size = tf.cast(n_readers, tf.int64) * self.n_items
        return tf.reshape(tf.math.unsorted_segment_sum(entries, cells, size), [n_readers, self.n_items])

    def pairs(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[N] scores of parallel (user, item) pairs (through each pair's whole row of scores)."""
        return tf.gather(self.all_items(users), items[:, None], batch_dims=1)[:, 0]


class ServingModule(tf.Module):
    """The exported model: a scoring head (ranks books) and a rating head (predicts stars).

    For rating kinds both heads are the trained model. Ranking kinds do not predict stars, so
    their rating head is the `bias` baseline (mean + user bias + book bias) fitted on the same data.
    """

    def __init__(
        self, scoring: FactorizedWeights | MLPWeights | ItemItemWeights, rating: FactorizedWeights | None = None
    ) -> None:
        super().__init__(name="bookrec")
        self.scoring = _build_head(scoring, "scoring")
        self.rating = self.scoring if rating is None else _build_head(rating, "rating")
        n_items, n_users = _sizes(scoring)
        self.n_items = tf.constant(n_items, dtype=tf.int32)
        self.n_users = tf.constant(n_users, dtype=tf.int32)

    @tf.function(input_signature=[_USERS, _ITEMS])
    def predict(self, user: tf.Tensor, item: tf.Tensor) -> dict[str, tf.Tensor]:
        """Predicted stars for each (user, item) pair."""
        return {"rating": self.rating.pairs(user, item)}

    @tf.function(input_signature=[_USERS, _K])
    def top_k(self, user: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        """The k best items of the whole catalogue for each user."""
        scores, items = best_k(self.scoring.all_items(user), k)
        return {"items": items, "scores": scores}

    @tf.function(input_signature=[_USERS, _K, _EXCLUDE_ROW, _EXCLUDE_ITEM])
    def recommend(
        self, user: tf.Tensor, k: tf.Tensor, exclude_row: tf.Tensor, exclude_item: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The k best items per user after masking the (row, item) pairs to exclude."""
        scores = self.scoring.all_items(user)
        pairs = tf.stack([exclude_row, exclude_item], axis=1)
        scores = tf.tensor_scatter_nd_update(scores, pairs, tf.fill([tf.shape(pairs)[0]], float("-inf")))
        scores, items = best_k(scores, k)
        return {"items": items, "scores": scores}


class HistoryServingModule(ServingModule):
    """A history-based kind's exported model: a `ServingModule` that also scores readers from their books
    (through an encoder for a factorized head; an item-item head scores books itself)."""

    def __init__(
        self,
        scoring: FactorizedWeights | ItemItemWeights,
        history: EncoderWeights | None,
        rating: FactorizedWeights | None = None,
    ) -> None:
        super().__init__(scoring, rating)
        self.history = self.scoring if history is None else _EncodedHistory(history, self.scoring, "history")

    @tf.function(input_signature=[_HISTORY_ITEM, _HISTORY_ROW, _HISTORY_RATING, _N_READERS, _K])
    def recommend_history(
        self,
        history_item: tf.Tensor,
        history_row: tf.Tensor,
        history_rating: tf.Tensor,
        n_readers: tf.Tensor,
        k: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        """The k best books for each of n_readers readers scored from their books and ratings, their own books
        masked out."""
        n_items = tf.cast(self.n_items, tf.int64)
        given = tf.cast(history_row, tf.int64) * n_items + tf.cast(history_item, tf.int64)
        order = tf.argsort(given)
        keys, pair = tf.unique(tf.gather(given, order))
        ratings = tf.math.segment_max(tf.gather(history_rating, order), pair)
        rows, items = tf.cast(keys // n_items, tf.int32), tf.cast(keys % n_items, tf.int32)
        scores = self.history.from_history(items, rows, ratings, n_readers)
        own = tf.stack([rows, items], axis=1)
        scores = tf.tensor_scatter_nd_update(scores, own, tf.fill([tf.shape(own)[0]], float("-inf")))
        scores, top = best_k(scores, k)
        return {"items": top, "scores": scores}


def serving_module(
    scoring: FactorizedWeights | MLPWeights | ItemItemWeights,
    rating: FactorizedWeights | None = None,
    history: EncoderWeights | None = None,
) -> ServingModule:
    """The module to export: a `HistoryServingModule` when the kind gave history weights or is item-item, else a
    `ServingModule`."""
    if isinstance(scoring, ItemItemWeights):
        return HistoryServingModule(scoring, None, rating)
    if history is None:
        return ServingModule(scoring, rating)
    if not isinstance(scoring, FactorizedWeights):
        raise TypeError("history weights score readers with a factorized head; this kind's scoring head is an MLP")
    return HistoryServingModule(scoring, history, rating)


def _build_head(weights: FactorizedWeights | MLPWeights | ItemItemWeights, name: str) -> tf.Module:
    if isinstance(weights, ItemItemWeights):
        return _ItemItem(weights, name)
    return _Factorized(weights, name) if isinstance(weights, FactorizedWeights) else _MLP(weights, name)


def _sizes(weights: FactorizedWeights | MLPWeights | ItemItemWeights) -> tuple[int, int]:
    """(books, training users) of a scoring head's weights."""
    if isinstance(weights, ItemItemWeights):
        return weights.n_items, weights.n_users
    return int(weights.item_vectors.shape[0]), int(weights.user_vectors.shape[0])


def save(module: ServingModule, path: Path) -> None:
    """Write `module` as a SavedModel at `path` with the predict, top_k and recommend signatures
    (and recommend_history for a `HistoryServingModule`)."""
    signatures = {
        "serving_default": module.predict,
        "predict": module.predict,
        "top_k": module.top_k,
        "recommend": module.recommend,
    }
    if isinstance(module, HistoryServingModule):
        signatures["recommend_history"] = module.recommend_history
    tf.saved_model.save(module, str(path), signatures=signatures)


def load(path: Path):
    """Load a SavedModel written by `save` (plain `tf.saved_model.load`)."""
    return tf.saved_model.load(str(path))


def history_takes_ratings(loaded) -> bool:
    """Whether a loaded SavedModel's `recommend_history` takes `history_rating` (those saved before it did take
    readers' books only)."""
    signature = loaded.signatures.get("recommend_history")
    return signature is not None and "history_rating" in signature.structured_input_signature[1]
