"""`deep`: the seed notebook's deep model — concatenated embeddings, Dense 128 -> 32 -> 1, MSE."""

from __future__ import annotations

import keras
from keras import ops

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import RATING, MLPWeights, ModelSpec, training_bytes


class DeepRating(keras.Model):
    """User and item embeddings concatenated and fed through two ReLU layers to one rating."""

    def __init__(self, n_users: int, n_items: int, dim: int, hidden: tuple[int, ...] = (128, 32), **kwargs) -> None:
        super().__init__(**kwargs)
        self.user_embedding = keras.layers.Embedding(n_users, dim, name="user_embedding")
        self.item_embedding = keras.layers.Embedding(n_items, dim, name="item_embedding")
        self.hidden = [keras.layers.Dense(h, activation="relu", name=f"dense_{h}") for h in hidden]
        self.out = keras.layers.Dense(1, name="rating")

    def call(self, inputs):
        x = ops.concatenate([self.user_embedding(inputs["user"]), self.item_embedding(inputs["item"])], axis=-1)
        for layer in self.hidden:
            x = layer(x)
        return ops.squeeze(self.out(x), axis=-1)


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """A compiled seed `deep` model."""
    model = DeepRating(n_users, n_items, int(params["dim"]))
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss="mse",
        metrics=[keras.metrics.MeanSquaredError(name="mse")],
    )
    return model


def serving_weights(model: DeepRating, train: Interactions) -> MLPWeights:
    """Embedding tables and the dense layers' kernels and biases, input to output."""
    layers = [*model.hidden, model.out]
    return MLPWeights(
        user_vectors=model.user_embedding.embeddings.numpy(),
        item_vectors=model.item_embedding.embeddings.numpy(),
        kernels=[layer.kernel.numpy() for layer in layers],
        biases=[layer.bias.numpy() for layer in layers],
    )


def memory(n_users: int, n_items: int, params: dict) -> int:
    """User and book embeddings and the dense layers."""
    dim = int(params["dim"])
    return training_bytes((n_users + n_items) * dim + 2 * dim * 128 + 128 + 128 * 32 + 32 + 33)


SPEC = ModelSpec(
    kind="deep",
    task=RATING,
    feed="pairs",
    defaults={"dim": 10, "epochs": 30, "batch_size": 1024, "learning_rate": 0.001, "patience": 2},
    build=build,
    serving_weights=serving_weights,
    memory=memory,
    description="the seed's deep model: concatenated embeddings, Dense 128 -> 32 -> 1, MSE",
)
