"""`biased-mf`: global mean + user bias + item bias + user . item, with per-example L2 (Funk SVD)."""

from __future__ import annotations

import keras
from keras import ops

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import RATING, FactorizedWeights, ModelSpec, training_bytes
from bookrec.worker.learn.models.embeddings import RegularizedEmbedding


class BiasedMatrixFactorization(keras.Model):
    """Rating = mean + b_u + b_i + p_u . q_i; the mean is fixed to the training mean."""

    def __init__(
        self, n_users: int, n_items: int, dim: int, l2: float, l2_bias: float, global_mean: float, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.global_mean = float(global_mean)
        self.user_vectors = RegularizedEmbedding(n_users, dim, l2, init_scale=0.05, name="user_vectors")
        self.item_vectors = RegularizedEmbedding(n_items, dim, l2, init_scale=0.05, name="item_vectors")
        self.user_bias = RegularizedEmbedding(n_users, 1, l2_bias, init_scale=0.0, name="user_bias")
        self.item_bias = RegularizedEmbedding(n_items, 1, l2_bias, init_scale=0.0, name="item_bias")

    def call(self, inputs):
        user, item = inputs["user"], inputs["item"]
        dot = ops.sum(self.user_vectors(user) * self.item_vectors(item), axis=-1)
        bias = ops.squeeze(self.user_bias(user), -1) + ops.squeeze(self.item_bias(item), -1)
        return self.global_mean + bias + dot


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """A compiled `biased-mf` model."""
    model = BiasedMatrixFactorization(
        n_users, n_items, int(params["dim"]), float(params["l2"]), float(params["l2_bias"]), global_mean
    )
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss="mse",
        metrics=[keras.metrics.MeanSquaredError(name="mse")],
    )
    return model


def serving_weights(model: BiasedMatrixFactorization, train: Interactions) -> FactorizedWeights:
    """Vectors, biases and the global mean."""
    return FactorizedWeights(
        user_vectors=model.user_vectors.table.numpy(),
        item_vectors=model.item_vectors.table.numpy(),
        user_bias=model.user_bias.table.numpy()[:, 0],
        item_bias=model.item_bias.table.numpy()[:, 0],
        global_bias=model.global_mean,
    )


def memory(n_users: int, n_items: int, params: dict) -> int:
    """User and book vectors and biases."""
    return training_bytes((n_users + n_items) * (int(params["dim"]) + 1))


SPEC = ModelSpec(
    kind="biased-mf",
    task=RATING,
    feed="pairs",
    defaults={
        "dim": 64,
        "epochs": 40,
        "batch_size": 512,
        "learning_rate": 0.002,
        "l2": 0.1,
        "l2_bias": 0.01,
        "patience": 3,
    },
    build=build,
    serving_weights=serving_weights,
    memory=memory,
    description="global mean + user and book biases + dot product, per-example L2 (Funk SVD)",
)
