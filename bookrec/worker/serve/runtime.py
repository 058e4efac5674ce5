"""A model version loaded for serving: the SavedModel, id maps, seen sets, popularity and book metadata.

`ModelRuntime.recommend` turns a batch of user ids into cache entries (JSON strings) with one
batched model call: unknown users get the most popular books they have not rated. A reader's books are their
current history: the version's training history plus the books of their delta (rated after the version's
snapshot), minus the ones whose rating they removed (`current_history`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from bookrec.model_store.store import ModelStore
from bookrec.shared.delta import EMPTY, ReaderDelta
from bookrec.shared.entries import FALLBACK_POPULAR, json_id
from bookrec.shared.errors import CorruptVersion
from bookrec.worker.learn import artifacts, export
from bookrec.worker.learn.data import IdMap, UserItems

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
        self.item_map = IdMap.from_list(metadata["id_maps"]["items"])
        self.n_items = len(self.item_map)
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

    def recommend(self, user_ids: list[str], n: int, deltas: list[ReaderDelta] | None = None) -> Batch:
        """Top-`n` books outside each user's current history (`deltas`: each user's delta, in order; none if
        omitted), as cache-entry JSON strings, with one model call for the batch."""
        deltas = deltas if deltas is not None else [EMPTY] * len(user_ids)
        users = self.user_map.index(user_ids)
        history_rows, history_items = current_history(self.seen, self.seen_users.index(user_ids), deltas, self.item_map)
        known = np.flatnonzero(users >= 0)
        items = np.full((len(user_ids), n), -1, dtype=np.int32)
        scores = np.zeros((len(user_ids), n), dtype=np.float32)
        if len(known):
            top, top_scores = self.score(users, known, history_rows, history_items, n)
            items[known, : top.shape[1]] = top
            scores[known, : top.shape[1]] = top_scores
        unknown = np.flatnonzero(users < 0)
        if len(unknown):
            order = np.argsort(history_rows, kind="stable")
            bounds = np.searchsorted(history_rows[order], np.stack([unknown, unknown + 1]))
            for row, start, stop in zip(unknown, *bounds):
                items[row], scores[row] = self._popular(history_items[order[start:stop]], n)
        generated_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fallback = np.zeros(len(user_ids), dtype=bool)
        fallback[unknown] = True
        entries = [
            self._entry(user_id, n, generated_at, bool(fallback[i]), deltas[i].through, items[i], scores[i])
            for i, user_id in enumerate(user_ids)
        ]
        return Batch(list(user_ids), entries, len(unknown))

    def score(
        self, users: np.ndarray, known: np.ndarray, history_rows: np.ndarray, history_items: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-`k` items and scores of the readers at positions `known` of the batch (those the model knows,
        `users` their indices), none of them in the reader's current history (`history_rows`, `history_items`:
        flat int32 arrays, row = position in the batch). The one place a batch is scored: every kind scores by
        user index today; a history-based kind will score the current history through its history signature here
        (that scorer takes the same flat arrays, rows renumbered to the readers it scores)."""
        position = np.full(len(users), -1, dtype=np.int32)
        position[known] = np.arange(len(known), dtype=np.int32)
        mine = position[history_rows] >= 0
        result = self.module.recommend(
            user=users[known],
            k=np.int32(k),
            exclude_row=position[history_rows[mine]],
            exclude_item=history_items[mine],
        )
        top, top_scores = result["items"].numpy(), result["scores"].numpy()
        top[~np.isfinite(top_scores)] = -1
        return top, top_scores

    def _popular(self, history: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The `n` most popular items outside a reader's current history (item indices), with their counts as scores."""
        head = self.popular_order[: n + len(history)]
        if len(history):
            head = head[~np.isin(head, history)]
        head = head[:n]
        items = np.full(n, -1, dtype=np.int32)
        scores = np.zeros(n, dtype=np.float32)
        items[: len(head)] = head
        scores[: len(head)] = self.popularity[head]
        return items, scores

    def _entry(
        self,
        user_id: str,
        n: int,
        generated_at: str,
        fallback: bool,
        through: str | None,
        items: np.ndarray,
        scores: np.ndarray,
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
            f'"fallback": {json.dumps(FALLBACK_POPULAR) if fallback else "null"}, '
            f'"ratings_through": {json.dumps(through)}, "items": [{", ".join(parts)}]}}'
        )


def current_history(
    seen: UserItems, seen_rows: np.ndarray, deltas: list[ReaderDelta], item_map: IdMap
) -> tuple[np.ndarray, np.ndarray]:
    """Each reader's current history as flat int32 arrays (row = position in the batch, item index): their books
    in the version's seen sets (`seen_rows`, -1 for none) plus the books their delta rated, minus the ones it
    removed. Books the version does not know are left out."""
    rows, items = seen.rows(seen_rows)
    rows, items = rows.astype(np.int32), items.astype(np.int32)
    rated_rows, rated = _flat(deltas, "rated", item_map)
    removed_rows, removed = _flat(deltas, "removed", item_map)
    if len(removed):
        n_items = np.int64(len(item_map))
        keep = ~np.isin(rows * n_items + items, removed_rows * n_items + removed)
        rows, items = rows[keep], items[keep]
    if len(rated):
        rows, items = np.concatenate([rows, rated_rows]), np.concatenate([items, rated])
    return rows, items


def _flat(deltas: list[ReaderDelta], which: str, item_map: IdMap) -> tuple[np.ndarray, np.ndarray]:
    """The (row, item index) pairs of every reader's `which` books (`rated` or `removed`) the version knows."""
    books: list[str] = []
    rows: list[int] = []
    for row, reader in enumerate(deltas):
        found = getattr(reader, which)
        if found:
            books.extend(found)
            rows.extend([row] * len(found))
    if not books:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32)
    indices = item_map.index(books)
    known = indices >= 0
    return np.asarray(rows, dtype=np.int32)[known], indices[known]


def _item_fragments(books: list[dict]) -> tuple[list[str], list[str]]:
    """Per item index, the JSON text before and after its score in a cache entry."""
    prefixes, suffixes = [], []
    for book in books:
        prefixes.append(f'{{"book_id": {json.dumps(json_id(str(book["book_id"])))}, "score": ')
        rest = {k: book.get(k) for k in ("title", "authors", "year", "image_url")}
        suffixes.append(", " + json.dumps(rest, ensure_ascii=False)[1:])
    return prefixes, suffixes
