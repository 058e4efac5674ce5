"""A model version loaded for serving: the SavedModel, id maps, seen sets, popularity and book metadata.

`ModelRuntime.recommend` turns a batch of user ids into cache entries (JSON strings) with one
batched model call. History-based kinds score each reader's current history (a reader the version never saw
included, once they have rated a book the version knows); rating-only kinds score by user index. Readers with
nothing to score from get the most popular books they have not rated. A reader's books are their
current history: the version's training history plus the books of their delta (rated after the version's
snapshot, at the delta's rating), minus the ones whose rating they removed (`current_history`).
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
        self.history_based = hasattr(module, "recommend_history")
        """Whether the version scores readers from their books (its SavedModel has `recommend_history`)."""
        self._history_ratings = export.history_takes_ratings(module)
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
        history_rows, history_items, history_ratings = current_history(
            self.seen, self.seen_users.index(user_ids), deltas, self.item_map
        )
        scored = np.unique(history_rows) if self.history_based else np.flatnonzero(users >= 0)
        items = np.full((len(user_ids), n), -1, dtype=np.int32)
        scores = np.zeros((len(user_ids), n), dtype=np.float32)
        if len(scored):
            top, top_scores = self.score(users, scored, (history_rows, history_items, history_ratings), n)
            items[scored, : top.shape[1]] = top
            scores[scored, : top.shape[1]] = top_scores
        unknown = np.setdiff1d(np.arange(len(user_ids)), scored, assume_unique=True)
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
        self, users: np.ndarray, scored: np.ndarray, history: tuple[np.ndarray, np.ndarray, np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-`k` items and scores of the readers at positions `scored` of the batch, none of them in the
        reader's current history (`history`: its rows, items and ratings as flat arrays, row = position in the
        batch, from `current_history`).
        A history-based kind scores the current history through its `recommend_history` signature (so a rating
        moves the list, and a reader the version never saw is scored from their books); the others score by user
        index (`users`, the readers' indices; every scored reader is known to the version)."""
        history_rows, history_items, history_ratings = history
        position = np.full(len(users), -1, dtype=np.int32)
        position[scored] = np.arange(len(scored), dtype=np.int32)
        mine = position[history_rows] >= 0
        if self.history_based:
            ratings = {"history_rating": history_ratings[mine]} if self._history_ratings else {}
            result = self.module.recommend_history(
                history_item=history_items[mine],
                history_row=position[history_rows[mine]],
                n_readers=np.int32(len(scored)),
                k=np.int32(k),
                **ratings,
            )
        else:
            result = self.module.recommend(
                user=users[scored],
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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reader's current history as flat arrays (row = position in the batch, item index, rating; int32, int32,
    float32): their books in the version's seen sets (`seen_rows`, -1 for none) at the rating seen there, minus the
    ones their delta removed or rated again, plus the books their delta rated at the delta's rating. Books the
    version does not know are left out."""
    rows, items, ratings = seen.rated_rows(seen_rows)
    rows, items = rows.astype(np.int32), items.astype(np.int32)
    rated_rows, rated, stars = _rated(deltas, item_map)
    removed_rows, removed = _removed(deltas, item_map)
    changed_rows, changed = np.concatenate([rated_rows, removed_rows]), np.concatenate([rated, removed])
    if len(changed):
        n_items = np.int64(len(item_map))
        keep = ~np.isin(rows * n_items + items, changed_rows * n_items + changed)
        rows, items, ratings = rows[keep], items[keep], ratings[keep]
    if len(rated):
        rows, items = np.concatenate([rows, rated_rows]), np.concatenate([items, rated])
        ratings = np.concatenate([ratings, stars])
    return rows, items, ratings.astype(np.float32)


def _rated(deltas: list[ReaderDelta], item_map: IdMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (row, item index, rating) of every book a reader's delta rated that the version knows."""
    rows, items, known = _flat([reader.rated for reader in deltas], item_map)
    stars = np.fromiter((stars for reader in deltas for stars in reader.stars), np.float32)
    return rows, items, stars[known]


def _removed(deltas: list[ReaderDelta], item_map: IdMap) -> tuple[np.ndarray, np.ndarray]:
    """The (row, item index) of every book a reader's delta removed that the version knows."""
    rows, items, _ = _flat([reader.removed for reader in deltas], item_map)
    return rows, items


def _flat(books: list[tuple[str, ...]], item_map: IdMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reader's `books` in one flat list: the (row, item index) of those the version knows, and the mask of
    them over the flat list."""
    flat = [book for mine in books for book in mine]
    if not flat:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32), np.empty(0, dtype=bool)
    rows = np.repeat(np.arange(len(books), dtype=np.int32), [len(mine) for mine in books])
    indices = item_map.index(flat)
    known = indices >= 0
    return rows[known], indices[known], known


def _item_fragments(books: list[dict]) -> tuple[list[str], list[str]]:
    """Per item index, the JSON text before and after its score in a cache entry."""
    prefixes, suffixes = [], []
    for book in books:
        prefixes.append(f'{{"book_id": {json.dumps(json_id(str(book["book_id"])))}, "score": ')
        rest = {k: book.get(k) for k in ("title", "authors", "year", "image_url")}
        suffixes.append(", " + json.dumps(rest, ensure_ascii=False)[1:])
    return prefixes, suffixes
