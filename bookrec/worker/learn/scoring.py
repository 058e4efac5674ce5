"""A serving module (live or loaded from a SavedModel) seen through the evaluation `Scorer` protocol."""

from __future__ import annotations

import numpy as np

from bookrec.worker.learn.data import UserItems
from bookrec.worker.learn.evaluation.evaluate import Scorer


class SavedModelScorer:
    """Scores with the exported signatures, so evaluation measures exactly what workers serve.

    Pairs with a user or item unknown to the model get `fallback`'s rating (the `bias` baseline
    fitted on the same training data).
    """

    def __init__(self, module, fallback: Scorer) -> None:
        self.module, self.fallback = module, fallback

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted stars for each pair; unknown ids (-1) get the fallback's rating."""
        users, items = np.asarray(users, np.int32), np.asarray(items, np.int32)
        out = np.asarray(self.fallback.predict(users, items), dtype=np.float32).copy()
        known = (users >= 0) & (items >= 0)
        if known.any():
            out[known] = self.module.predict(user=users[known], item=items[known])["rating"].numpy()
        return out

    def top_k(self, users: np.ndarray, k: int, exclude: UserItems) -> np.ndarray:
        """[len(users), k] best unseen items per (known) user; -1 pads lists with fewer candidates."""
        users = np.asarray(users, np.int32)
        return self.top_k_excluding(users, k, *exclude.rows(users))

    def top_k_excluding(self, users: np.ndarray, k: int, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Like `top_k`, with the exclusions given as (batch row, item) pairs."""
        result = self.module.recommend(
            user=users, k=np.int32(k), exclude_row=rows.astype(np.int32), exclude_item=items.astype(np.int32)
        )
        top = result["items"].numpy()
        top[~np.isfinite(result["scores"].numpy())] = -1
        if top.shape[1] < k:
            top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
        return top
