"""The 2019 seed notebook's way of recommending for one user, rebuilt on today's weights, for comparison.

The notebook built one serialized `tf.train.Example` (user id, book id) per book in a pandas
`iterrows` loop, parsed the batch with `tf.io.parse_example`, scored every pair, then dropped
the user's rated books and sorted a DataFrame. Here the pairs are scored with the served
version's own scoring weights, so only the way of computing differs from the service.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from bookrec.shared.errors import BookrecError
from bookrec.worker.serve.runtime import ModelRuntime

FEATURES = {"user_id": tf.io.FixedLenFeature([], tf.int64), "book_id": tf.io.FixedLenFeature([], tf.int64)}


def applies(runtime: ModelRuntime) -> bool:
    """Whether the version has the factorized scoring head the seed's way of scoring needs (not `ease`)."""
    return hasattr(runtime.module.scoring, "item_bias")


class SeedPath:
    """One loaded version scored the seed's way: a frame of all books, and book id -> item index."""

    def __init__(self, runtime: ModelRuntime, catalog: list[dict]) -> None:
        if not applies(runtime):
            raise BookrecError(f"the seed-path comparison needs a factorized scoring head; {runtime.kind} is not one")
        self.runtime = runtime
        self.item_ids = [str(book["book_id"]) for book in catalog]
        self.item_index = {book_id: index for index, book_id in enumerate(self.item_ids)}
        self.books = pd.DataFrame(
            {
                "book_id": [int(book_id) for book_id in self.item_ids],
                "title": [book.get("title") for book in catalog],
                "authors": [book.get("authors") for book in catalog],
            }
        )

    def recommend(self, user_id: str, n: int = 10) -> list[int]:
        """The top-`n` unrated book ids of one known user (ids are integers, as in goodbooks)."""
        examples = []
        for _, row in self.books.iterrows():
            features = tf.train.Features(
                feature={
                    "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(user_id)])),
                    "book_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row["book_id"])])),
                }
            )
            examples.append(tf.train.Example(features=features).SerializeToString())
        parsed = tf.io.parse_example(tf.constant(examples), FEATURES)
        book_ids = parsed["book_id"].numpy()
        users = self.runtime.user_map.index([str(u) for u in parsed["user_id"].numpy()])
        items = np.array([self.item_index.get(str(b), -1) for b in book_ids], dtype=np.int32)
        head = self.runtime.module.scoring
        dot = tf.reduce_sum(tf.gather(head.user_vectors, users) * tf.gather(head.item_vectors, items), axis=-1)
        scores = dot + tf.gather(head.user_bias, users) + tf.gather(head.item_bias, items) + head.global_bias
        frame = pd.DataFrame({"book_id": book_ids, "score": scores.numpy()})
        seen_row = self.runtime.seen_users.index_of(user_id)
        rated = [int(self.item_ids[i]) for i in self.runtime.seen.items_of(seen_row)]
        frame = frame[~frame["book_id"].isin(rated)]
        return frame.sort_values("score", ascending=False).head(n)["book_id"].tolist()


def measure(runtime: ModelRuntime, catalog: list[dict], user_ids: list[str], n: int = 10) -> dict:
    """Median ms per user of the seed's way over `user_ids` (known users), and how often it agrees with the service.

    Returns {"ms_per_user", "users", "same_top_n"}: same_top_n counts users whose top-n lists are identical.
    """
    seed = SeedPath(runtime, catalog)
    times, same = [], 0
    for user_id in user_ids:
        started = time.perf_counter()
        theirs = seed.recommend(user_id, n)
        times.append(time.perf_counter() - started)
        ours = json.loads(runtime.recommend([user_id], n).entries[0])["items"]
        same += theirs == [item["book_id"] for item in ours]
    return {"ms_per_user": float(np.median(times) * 1000), "users": len(user_ids), "same_top_n": same}
