"""Keras building blocks shared by the model kinds: embedding lookups with per-example L2."""

from __future__ import annotations

import keras
from keras import ops


class RegularizedEmbedding(keras.layers.Layer):
    """An embedding table whose L2 penalty applies to the rows looked up in the batch.

    Penalising only the rows a batch touches regularises each user and item in proportion
    to how often it is seen, as SGD matrix factorisation (Funk SVD, Surprise's SVD) does,
    instead of shrinking the whole table every step.
    """

    def __init__(self, count: int, dim: int, l2: float = 0.0, init_scale: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.count, self.dim, self.l2, self.init_scale = count, dim, l2, init_scale

    def build(self, input_shape) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(self.count, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=self.init_scale) if self.init_scale else "zeros",
        )

    def call(self, indices):
        rows = ops.take(self.table, indices, axis=0)
        if self.l2:
            self.add_loss(self.l2 * ops.mean(ops.sum(ops.square(rows), axis=-1)))
        return rows

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "count": self.count,
            "dim": self.dim,
            "l2": self.l2,
            "init_scale": self.init_scale,
        }
