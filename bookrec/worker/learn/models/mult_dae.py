"""`mult-dae`: a denoising autoencoder over each user's rated books with a multinomial likelihood.

Liang et al., "Variational Autoencoders for Collaborative Filtering" (WWW 2018), Mult-DAE:
a user's set of rated books (multi-hot, L2-normalised, with dropout on the input) is encoded
to a small tanh layer and decoded to logits over the whole catalogue; the loss is the
negative log-likelihood of the user's books under the softmax of those logits. It is trained
to rank, not to predict stars. Serving precomputes each user's encoding, so the SavedModel
scores with the same factorized form (user vector . book vector + book bias) as `mf`. It is
history-based: the SavedModel also carries the encoder, so `recommend_history` scores any reader
from their books with the same encoding as training (multi-hot, L2-normalised, no dropout).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from bookrec.worker.learn.data import Interactions
from bookrec.worker.learn.models.base import (
    RANKING,
    EncoderWeights,
    FactorizedWeights,
    HeldOutLoss,
    ModelSpec,
    training_bytes,
)
from bookrec.worker.learn.models.feeds import UserRows


def normalise(rows):
    """Scale each multi-hot row to unit L2 norm (empty rows stay zero)."""
    return rows / ops.maximum(ops.sqrt(ops.sum(ops.square(rows), axis=-1, keepdims=True)), 1e-6)


def multinomial_nll(targets, logits):
    """Mean over users of -sum_i x_ui log softmax(logits_u)_i."""
    return -ops.mean(ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1))


class MultDAE(keras.Model):
    """Multi-hot user row -> dropout -> Dense(hidden, tanh) -> Dense(n_items) logits."""

    def __init__(self, n_items: int, hidden: int, dropout: float, l2: float, **kwargs) -> None:
        super().__init__(**kwargs)
        regularizer = keras.regularizers.L2(l2) if l2 else None
        self.dropout = keras.layers.Dropout(dropout)
        self.encoder = keras.layers.Dense(hidden, activation="tanh", kernel_regularizer=regularizer, name="encoder")
        self.decoder = keras.layers.Dense(n_items, kernel_regularizer=regularizer, name="decoder")

    def encode(self, rows, training: bool = False):
        """The user representation for multi-hot rows."""
        return self.encoder(self.dropout(normalise(rows), training=training))

    def call(self, rows, training: bool = False):
        return self.decoder(self.encode(rows, training=training))


def nll_per_book(model: MultDAE, inputs: np.ndarray, targets: np.ndarray) -> float:
    """The multinomial NLL of the `targets` rows' books under the softmax of the model's logits for the `inputs`
    rows (no dropout), summed over every row and divided by the number of target books."""
    logits = model(inputs, training=False)
    nll = -ops.sum(ops.convert_to_tensor(targets) * ops.log_softmax(logits, axis=-1))
    return float(nll) / max(float(targets.sum()), 1.0)


def build(n_users: int, n_items: int, params: dict, global_mean: float) -> keras.Model:
    """A compiled `mult-dae` model (inputs and targets are multi-hot user rows)."""
    model = MultDAE(n_items, int(params["dim"]), float(params["dropout"]), float(params["l2"]))
    model.compile(optimizer=keras.optimizers.Adam(params["learning_rate"]), loss=multinomial_nll)
    return model


def serving_weights(model: MultDAE, train: Interactions) -> FactorizedWeights:
    """Every user's encoding of their training books, the decoder's kernel as book vectors, its bias as book biases."""
    rows = UserRows(train.by_user(), train.n_items, batch_size=1024)
    user_vectors = np.concatenate([np.asarray(model.encode(rows[i][0], training=False)) for i in range(len(rows))])
    kernel = model.decoder.kernel.numpy()
    return FactorizedWeights(
        user_vectors=user_vectors.astype(np.float32),
        item_vectors=kernel.T.copy(),
        user_bias=np.zeros(len(user_vectors), np.float32),
        item_bias=model.decoder.bias.numpy(),
        global_bias=0.0,
    )


def history_weights(model: MultDAE) -> EncoderWeights:
    """The encoder's kernel and bias: a reader's vector from their books, as `MultDAE.encode` computes it."""
    return EncoderWeights(kernel=model.encoder.kernel.numpy(), bias=model.encoder.bias.numpy())


def memory(n_users: int, n_items: int, params: dict) -> int:
    """Encoder and decoder (2 x books x dim), every user's encoding, and a batch of dense rows through the net."""
    dim, batch = int(params["dim"]), int(params["batch_size"])
    return training_bytes(2 * n_items * dim + dim + n_items, activations=6 * batch * n_items + n_users * dim)


SPEC = ModelSpec(
    kind="mult-dae",
    task=RANKING,
    feed="histories",
    defaults={
        "dim": 200,
        "dropout": 0.5,
        "l2": 0.0,
        "learning_rate": 0.001,
        "batch_size": 128,
        "steps": 600,
        "epochs": None,
        "max_epochs": 200,
    },
    build=build,
    serving_weights=serving_weights,
    memory=memory,
    history_weights=history_weights,
    held_out_loss=HeldOutLoss("multinomial NLL per book (no dropout)", nll_per_book),
    description="denoising autoencoder over each user's books, multinomial likelihood (Mult-DAE): trained to rank",
)
