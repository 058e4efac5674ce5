"""`softmax-mf`: a factor model trained to rank — each rated book is a class over the whole catalogue.

For every (user, rated book) pair the loss is the softmax cross-entropy of that book among all
books in the catalogue (the full-softmax form of the sampled softmax TensorFlow Recommenders'
retrieval task uses; with 10,000 books the full softmax is cheap and has no sampling bias).
Scores are user . book + book bias, so it serves through the same factorized top-k as `mf`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import RANKING, FactorizedWeights, ModelSpec, training_bytes
from bookrec.worker.learn.models.embeddings import RegularizedEmbedding


class SoftmaxMatrixFactorization(keras.Model):
    """Logits over the catalogue for a batch of users: U[u] . V^T + b."""

    def __init__(self, n_users: int, n_items: int, dim: int, l2: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.user_vectors = RegularizedEmbedding(n_users, dim, l2, init_scale=0.05, name="user_vectors")
        self.item_vectors = self.add_weight(
            name="item_vectors", shape=(n_items, dim), initializer=keras.initializers.RandomNormal(stddev=0.05)
        )
        self.item_bias = self.add_weight(name="item_bias", shape=(n_items,), initializer="zeros")
        self.l2 = l2

    def call(self, inputs):
        users = self.user_vectors(inputs["user"])
        if self.l2:
            self.add_loss(self.l2 * ops.mean(ops.sum(ops.square(self.item_vectors), axis=-1)))
        return ops.matmul(users, ops.transpose(self.item_vectors)) + self.item_bias


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """A compiled `softmax-mf` model (targets are item indices)."""
    model = SoftmaxMatrixFactorization(n_users, n_items, int(params["dim"]), float(params["l2"]))
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def serving_weights(model: SoftmaxMatrixFactorization, train: Interactions) -> FactorizedWeights:
    """Vectors and book biases; user biases are zero (they do not change a user's ranking)."""
    users = model.user_vectors.table.numpy()
    return FactorizedWeights(
        user_vectors=users,
        item_vectors=model.item_vectors.numpy(),
        user_bias=np.zeros(len(users), np.float32),
        item_bias=model.item_bias.numpy(),
        global_bias=0.0,
    )


def memory(n_users: int, n_items: int, params: dict) -> int:
    """User and book vectors, book biases, and a batch's logits over the whole catalogue."""
    dim, batch = int(params["dim"]), int(params["batch_size"])
    return training_bytes((n_users + n_items) * dim + n_items, activations=3 * batch * n_items)


SPEC = ModelSpec(
    kind="softmax-mf",
    task=RANKING,
    feed="positives",
    defaults={"dim": 64, "epochs": 30, "batch_size": 1024, "learning_rate": 0.005, "l2": 0.0, "patience": 2},
    build=build,
    serving_weights=serving_weights,
    memory=memory,
    description="factor model trained to rank: full-catalogue softmax over each user's rated books",
)
