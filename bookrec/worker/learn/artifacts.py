"""The files of a model version besides metadata.json, and how they are written and read.

    saved_model/   the TensorFlow SavedModel (see worker/serving.py)
    seen.npz       every user's rated books and their ratings (CSR over the model's item indices), for filtering
                   and for scoring a reader from their books;
                   users are all users of the data files, including any the model never trained on
    catalog.json   one entry per item index: book_id, title, authors, year, image_url
    popularity.npy number of training ratings of each item index (the cold-start fallback ranks by it)
    trained_pairs.npy  sorted distinct uint32 keys of the (user, item) pairs trained on (evaluation.pair_keys),
                   so the next retrain's gate tests both versions only on ratings this one never saw

Arrays are read with `allow_pickle=False` and JSON with `json`: a version's files are data only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bookrec.shared.errors import CorruptVersion
from bookrec.worker.learn.data import IdMap, UserItems

SERVING_GRAPH = 2
"""The revision of the SavedModel's signature graphs that `metadata.json` records as `serving_graph` (1, or absent:
before 659a759; 2: the block top-k); raised whenever export.py changes what the graphs compute or how fast, so a
benchmark does not take a version exported by older code for its base model."""

SAVED_MODEL = "saved_model"
SEEN = "seen.npz"
CATALOG = "catalog.json"
POPULARITY = "popularity.npy"
TRAINED_PAIRS = "trained_pairs.npy"


@dataclass(frozen=True)
class Catalogue:
    """What a worker needs besides the model: seen sets, popularity order and book metadata."""

    seen_users: IdMap
    seen: UserItems
    popularity: np.ndarray  # training ratings per item index
    books: list[dict]


def build_catalog(item_map: IdMap, books: pd.DataFrame | None) -> list[dict]:
    """Metadata for each item index; items missing from `books` get null title, authors, year and image_url."""
    empty = {"title": None, "authors": None, "year": None, "image_url": None}
    entries = []
    for book_id in item_map.to_list():
        row = books.loc[book_id].to_dict() if books is not None and book_id in books.index else empty
        entries.append({"book_id": book_id, **{k: row.get(k) for k in empty}})
    return entries


def write(directory: Path, catalogue: Catalogue) -> None:
    """Write seen.npz, popularity.npy and catalog.json into a version directory being built."""
    np.savez(
        directory / SEEN,
        user_ids=np.asarray(catalogue.seen_users.to_list(), dtype=str),
        indptr=catalogue.seen.indptr,
        indices=catalogue.seen.indices,
        **({} if catalogue.seen.ratings is None else {"ratings": catalogue.seen.ratings}),
    )
    np.save(directory / POPULARITY, catalogue.popularity.astype(np.int64))
    (directory / CATALOG).write_text(json.dumps(catalogue.books, ensure_ascii=False), encoding="utf-8")


def write_trained_pairs(directory: Path, keys: np.ndarray) -> None:
    """Write the sorted distinct keys of the pairs a version trained on into its directory being built."""
    np.save(directory / TRAINED_PAIRS, np.unique(keys.astype(np.uint32)))


def read_trained_pairs(directory: Path) -> np.ndarray | None:
    """The keys `write_trained_pairs` wrote, or None for a version made before versions recorded them."""
    path = directory / TRAINED_PAIRS
    if not path.exists():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorruptVersion(f"{path} cannot be read: {exc}") from None


def read(directory: Path) -> Catalogue:
    """Read what `write` wrote; CorruptVersion names the file that cannot be read."""
    try:
        with np.load(directory / SEEN, allow_pickle=False) as seen:
            users = IdMap.from_list(seen["user_ids"].tolist())
            ratings = seen["ratings"] if "ratings" in seen.files else None  # none in versions made before
            matrix = UserItems(indptr=seen["indptr"], indices=seen["indices"], ratings=ratings)
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptVersion(f"{directory / SEEN} cannot be read: {exc}") from None
    try:
        popularity = np.load(directory / POPULARITY, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorruptVersion(f"{directory / POPULARITY} cannot be read: {exc}") from None
    try:
        books = json.loads((directory / CATALOG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptVersion(f"{directory / CATALOG} cannot be read: {exc}") from None
    return Catalogue(users, matrix, popularity, books)
