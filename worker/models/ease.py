"""`ease`: an item-item linear autoencoder solved in closed form (EASE), served as low-rank factors.

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW 2019): the book-book weights B
minimise ||X - X B||^2 + l2 ||B||^2 with a zero diagonal (no book may explain itself), where X
is the users x books multi-hot matrix. The optimum is closed-form: with P = (X^T X + l2 I)^-1,
B = I - P diag(1 / diag(P)). A user's scores are x_u B. Fitting is one pass over the user rows
to gather X^T X (as a Keras preprocessing layer's `adapt` gathers statistics), then the solve.
It is trained to rank, and on few users it beats the gradient-trained autoencoders, which
overfit there.

Workers serve the factorized form user vector . book vector, so B is replaced by Q Q^T B, its
projection on Q, an orthonormal basis of B's leading `dim`-dimensional column space found by
randomized subspace iteration (Halko, Martinsson and Tropp 2011): the user vector is x_u Q and
the book vectors are the rows of B^T Q. The zero diagonal only changes the scores of books a
user has already rated, which serving masks out.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from worker.data import Interactions
from worker.models.base import RANKING, FactorizedWeights, ModelSpec
from worker.models.feeds import UserRows

POWER_ITERATIONS = 2
"""Subspace iterations after the first random projection (on MovieLens, rank 512 then ranks within 0.001 ndcg@10 of the full B)."""


class EASE(keras.Model):
    """Multi-hot user rows -> scores over the catalogue, (x Q) (B^T Q)^T, once `fit` has solved for them.

    `fit` runs eagerly: each step adds its rows' co-occurrence counts to X^T X in place; the solve
    goes through the Cholesky factor L of X^T X + l2 I (P = W^T W with W = L^-1), and the
    n_items x n_items matrices are released as soon as it no longer needs them.
    """

    def __init__(self, n_items: int, dim: int, l2: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_items, self.rank, self.l2 = n_items, min(dim, n_items), l2
        self.seed = keras.random.SeedGenerator()
        self.user_projection: tf.Tensor | None = None
        self.item_vectors: tf.Tensor | None = None
        self._gram: tf.Variable | None = None
        self.built = True

    def fit(self, *args, **kwargs) -> keras.callbacks.History:
        """Gather X^T X over the user rows (averaged when there are several passes), then solve for the factors."""
        self._gram = tf.Variable(tf.zeros((self.n_items, self.n_items)), trainable=False)
        history = super().fit(*args, **kwargs)
        diagonal = tf.stack([tf.range(self.n_items)] * 2, axis=1)
        self._gram.scatter_nd_add(diagonal, tf.fill([self.n_items], self.l2 * max(1, len(history.epoch))))
        lower = tf.linalg.cholesky(self._gram.value())
        self._gram = None
        whitening = tf.linalg.triangular_solve(lower, tf.eye(self.n_items))
        del lower
        self.user_projection, self.item_vectors = self._solve(whitening)
        return history

    def train_step(self, data) -> dict[str, tf.Tensor]:
        """Add the batch's co-occurrence counts; report the ratings gathered so far (there is no loss before the solve)."""
        rows, _ = data
        self._gram.assign_add(tf.sparse.sparse_dense_matmul(tf.sparse.from_dense(rows), rows, adjoint_a=True))
        return {"ratings_gathered": tf.linalg.trace(self._gram)}

    def _solve(self, whitening: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(Q, B^T Q) for B = I - P diag(1 / diag(P)), where P = W^T W and W = `whitening`, without forming B."""
        scale = 1.0 / tf.reduce_sum(tf.square(whitening), axis=0)[:, None]

        def times_p(m: tf.Tensor) -> tf.Tensor:
            return tf.matmul(whitening, tf.matmul(whitening, m), transpose_a=True)

        def times_b(m: tf.Tensor) -> tf.Tensor:
            return m - times_p(scale * m)

        def times_b_transposed(m: tf.Tensor) -> tf.Tensor:
            return m - scale * times_p(m)

        basis = _orthonormal(times_b(keras.random.normal((self.n_items, self.rank), seed=self.seed)))
        for _ in range(POWER_ITERATIONS):
            basis = _orthonormal(times_b(_orthonormal(times_b_transposed(basis))))
        return basis, times_b_transposed(basis)

    def call(self, rows):
        return tf.matmul(tf.matmul(rows, self.user_projection), self.item_vectors, transpose_b=True)


def _orthonormal(m: tf.Tensor) -> tf.Tensor:
    """An orthonormal basis of the column space of `m` (same shape)."""
    return tf.linalg.qr(m)[0]


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """An `ease` model ready to fit on multi-hot user rows (`dim` is the served rank, `l2` the ridge penalty)."""
    model = EASE(n_items, int(params["dim"]), float(params["l2"]))
    model.compile(run_eagerly=True)
    return model


def serving_weights(model: EASE, train: Interactions) -> FactorizedWeights:
    """Each user's training row times Q as the user vector, B^T Q as the book vectors; biases are zero."""
    rows = UserRows(train.by_user(), train.n_items, batch_size=1024)
    user_vectors = np.concatenate([tf.matmul(rows[i][0], model.user_projection).numpy() for i in range(len(rows))])
    return FactorizedWeights(
        user_vectors=user_vectors,
        item_vectors=model.item_vectors.numpy(),
        user_bias=np.zeros(len(user_vectors), np.float32),
        item_bias=np.zeros(train.n_items, np.float32),
        global_bias=0.0,
    )


SPEC = ModelSpec(
    kind="ease",
    task=RANKING,
    feed="histories",
    defaults={"dim": 512, "l2": 200.0, "batch_size": 1024, "epochs": 1},
    build=build,
    serving_weights=serving_weights,
    description="book-book linear autoencoder solved in closed form (EASE), served as low-rank factors: trained to rank",
)
