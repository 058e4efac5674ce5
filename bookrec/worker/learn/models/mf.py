"""`mf`: the seed notebook's matrix factorisation — rating = user vector . book vector, MSE, Adam."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import RATING, FactorizedWeights, ModelSpec, training_bytes


class MatrixFactorization(keras.Model):
    """Dot product of a user and an item embedding, no biases (as in the 2019 notebook)."""

    def __init__(self, n_users: int, n_items: int, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.user_embedding = keras.layers.Embedding(n_users, dim, name="user_embedding")
        self.item_embedding = keras.layers.Embedding(n_items, dim, name="item_embedding")

    def call(self, inputs):
        u = self.user_embedding(inputs["user"])
        v = self.item_embedding(inputs["item"])
        return ops.sum(u * v, axis=-1)


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """A compiled seed `mf` model."""
    model = MatrixFactorization(n_users, n_items, int(params["dim"]))
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss="mse",
        metrics=[keras.metrics.MeanSquaredError(name="mse")],
    )
    return model


def serving_weights(model: MatrixFactorization, train: Interactions) -> FactorizedWeights:
    """The two tables; biases are zero."""
    users = model.user_embedding.embeddings.numpy()
    items = model.item_embedding.embeddings.numpy()
    return FactorizedWeights(users, items, np.zeros(len(users), np.float32), np.zeros(len(items), np.float32), 0.0)


def memory(n_users: int, n_items: int, params: dict) -> int:
    """User and book vectors."""
    return training_bytes((n_users + n_items) * int(params["dim"]))


SPEC = ModelSpec(
    kind="mf",
    task=RATING,
    feed="pairs",
    defaults={"dim": 10, "epochs": 30, "batch_size": 1024, "learning_rate": 0.003, "patience": 2},
    build=build,
    serving_weights=serving_weights,
    memory=memory,
    description="the seed's matrix factorisation: user . book embeddings (dim 10), MSE",
)
