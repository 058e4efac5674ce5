"""Batches for the `histories` feed: users' multi-hot rows built on the fly from the sparse ratings."""

from __future__ import annotations

import math

import keras
import numpy as np

from bookrec.worker.learn.data import UserItems


class UserRows(keras.utils.PyDataset):
    """(rows, rows) batches of dense multi-hot user rows, in a fresh random order every epoch when shuffling.

    Only one batch is ever dense, so 53,424 users x 10,000 books needs a few MB, not 2 GB.
    """

    def __init__(self, by_user: UserItems, n_items: int, batch_size: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.by_user, self.n_items, self.batch_size = by_user, n_items, batch_size
        self.rng = np.random.default_rng(seed) if seed is not None else None
        self.order = np.arange(by_user.n_users)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(self.by_user.n_users / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        users = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = np.zeros((len(users), self.n_items), dtype=np.float32)
        row, items = self.by_user.rows(users)
        rows[row, items] = 1.0
        return rows, rows

    def on_epoch_end(self) -> None:
        if self.rng is not None:
            self.rng.shuffle(self.order)
