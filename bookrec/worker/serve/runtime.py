"""A model version loaded for serving: the SavedModel, id maps, seen sets, popularity and book metadata.

`ModelRuntime.recommend` turns a batch of user ids into cache entries (JSON strings) with one
batched model call: unknown users get the most popular books they have not rated.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from bookrec.model_store.store import ModelStore
from bookrec.shared.entries import FALLBACK_POPULAR, json_id
from bookrec.shared.errors import CorruptVersion
from bookrec.worker.learn import artifacts, export
from bookrec.worker.learn.data import IdMap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Cache entries for a batch of users: JSON strings in request order, and how many used the fallback."""

    user_ids: list[str]
    entries: list[str]
    fallbacks: int


class ModelRuntime:
    """Everything a worker needs in memory to serve one model version."""

    def __init__(self, version: str, metadata: dict, module, catalogue: artifacts.Catalogue) -> None:
        self.version = version
        self.kind = metadata.get("kind")
        self.module = module
        self.user_map = IdMap.from_list(metadata["id_maps"]["users"])
        self.n_items = len(metadata["id_maps"]["items"])
        self.seen_users = catalogue.seen_users
        self.seen = catalogue.seen
        self.popular_order = np.argsort(-catalogue.popularity, kind="stable").astype(np.int32)
        self.popularity = catalogue.popularity.astype(np.float32)
        self._item_prefix, self._item_suffix = _item_fragments(catalogue.books)
        self._version_json = json.dumps(version)

    @classmethod
    def load(cls, store: ModelStore, version: str) -> "ModelRuntime":
        """Verify a version's files, load it and warm it up; CorruptVersion names the broken file."""
        started = time.perf_counter()
        path = store.verify(version)
        metadata = store.metadata(version)
        if "id_maps" not in metadata:
            raise CorruptVersion(
                f"{path / 'metadata.json'} has no id_maps: this version was not written by bookrec train"
            )
        try:
            module = export.load(path / artifacts.SAVED_MODEL)
        except Exception as exc:  # TensorFlow raises many types for a damaged SavedModel
            raise CorruptVersion(
                f"{path / artifacts.SAVED_MODEL} cannot be loaded: {str(exc).splitlines()[0][:300]}"
            ) from None
        runtime = cls(version, metadata, module, artifacts.read(path))
        runtime.warm_up()
        logger.info("loaded model %s (%s) in %.2f s", version, runtime.kind, time.perf_counter() - started)
        return runtime

    def warm_up(self) -> None:
        """Run the serving graph once so the first real job does not pay for tracing."""
        if len(self.user_map):
            self.recommend([self.user_map.ids[0]], 10)

    def recommend(self, user_ids: list[str], n: int) -> Batch:
        """Top-`n` unseen books for each user, as cache-entry JSON strings, with one model call for the batch."""
        users = self.user_map.index(user_ids)
        seen_rows = self.seen_users.index(user_ids)
        known = np.flatnonzero(users >= 0)
        items = np.full((len(user_ids), n), -1, dtype=np.int32)
        scores = np.zeros((len(user_ids), n), dtype=np.float32)
        if len(known):
            rows, seen_items = self.seen.rows(seen_rows[known])
            result = self.module.recommend(
                user=users[known], k=np.int32(n), exclude_row=rows.astype(np.int32), exclude_item=seen_items
            )
            top, top_scores = result["items"].numpy(), result["scores"].numpy()
            top[~np.isfinite(top_scores)] = -1
            items[known, : top.shape[1]] = top
            scores[known, : top.shape[1]] = top_scores
        unknown = np.flatnonzero(users < 0)
        for row in unknown:
            items[row], scores[row] = self._popular(seen_rows[row], n)
        generated_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fallback = np.zeros(len(user_ids), dtype=bool)
        fallback[unknown] = True
        entries = [
            self._entry(user_id, n, generated_at, bool(fallback[i]), items[i], scores[i])
            for i, user_id in enumerate(user_ids)
        ]
        return Batch(list(user_ids), entries, len(unknown))

    def _popular(self, seen_row: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The `n` most popular items the user (by seen-set row, -1 if none) has not rated, with their counts as scores."""
        head = self.popular_order[: n + (len(self.seen.items_of(seen_row)) if seen_row >= 0 else 0)]
        if seen_row >= 0:
            head = head[~np.isin(head, self.seen.items_of(seen_row))]
        head = head[:n]
        items = np.full(n, -1, dtype=np.int32)
        scores = np.zeros(n, dtype=np.float32)
        items[: len(head)] = head
        scores[: len(head)] = self.popularity[head]
        return items, scores

    def _entry(
        self, user_id: str, n: int, generated_at: str, fallback: bool, items: np.ndarray, scores: np.ndarray
    ) -> str:
        """One cache entry as JSON text, built from precomputed per-item fragments."""
        parts = [
            f"{self._item_prefix[i]}{format(float(s), '.6g')}{self._item_suffix[i]}"
            for i, s in zip(items.tolist(), scores.tolist())
            if i >= 0
        ]
        return (
            f'{{"user_id": {json.dumps(json_id(user_id))}, "model_version": {self._version_json}, '
            f'"generated_at": "{generated_at}", "n": {n}, '
            f'"fallback": {json.dumps(FALLBACK_POPULAR) if fallback else "null"}, "items": [{", ".join(parts)}]}}'
        )


def _item_fragments(books: list[dict]) -> tuple[list[str], list[str]]:
    """Per item index, the JSON text before and after its score in a cache entry."""
    prefixes, suffixes = [], []
    for book in books:
        prefixes.append(f'{{"book_id": {json.dumps(json_id(str(book["book_id"])))}, "score": ')
        rest = {k: book.get(k) for k in ("title", "authors", "year", "image_url")}
        suffixes.append(", " + json.dumps(rest, ensure_ascii=False)[1:])
    return prefixes, suffixes
