"""Ratings in index space: id mappings, interaction arrays, per-user item sets, popularity.

Original ids (from the ratings file) are strings; models work on contiguous int32 indices.
`IdMap` converts between them and is saved with every model version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class IdMap:
    """A bijection between original ids (strings) and contiguous indices 0..len-1."""

    ids: np.ndarray  # object array of str, index -> original id
    _lookup: dict = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self._lookup is None:
            object.__setattr__(self, "_lookup", {v: i for i, v in enumerate(self.ids.tolist())})

    @classmethod
    def from_ids(cls, ids: Iterable[str]) -> "IdMap":
        """Map the distinct values of `ids`, in order of first appearance."""
        uniques = pd.unique(pd.Series(ids if isinstance(ids, (pd.Series, np.ndarray)) else list(ids), dtype=object))
        return cls(np.asarray(uniques, dtype=object))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, original: str) -> bool:
        return original in self._lookup

    def index(self, originals: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
        """Indices of `originals` as int32; -1 where an id is unknown."""
        if isinstance(originals, pd.Series):
            return originals.map(self._lookup).fillna(-1).to_numpy(dtype=np.int64).astype(np.int32)
        get = self._lookup.get
        return np.fromiter((get(o, -1) for o in originals), dtype=np.int32, count=len(originals))

    def index_of(self, original: str) -> int:
        """Index of one original id, or -1."""
        return self._lookup.get(original, -1)

    def to_list(self) -> list[str]:
        """The original ids in index order (for metadata.json)."""
        return [str(x) for x in self.ids.tolist()]

    @classmethod
    def from_list(cls, ids: Sequence[str]) -> "IdMap":
        """Inverse of `to_list`; raises ValueError if an id repeats (the map would not be a bijection)."""
        idmap = cls(np.asarray(list(ids), dtype=object))
        if len(idmap._lookup) != len(idmap.ids):
            raise ValueError("id list has duplicates")
        return idmap


@dataclass(frozen=True)
class Interactions:
    """Ratings as parallel arrays of user index, item index and rating (index -1 = unknown id)."""

    users: np.ndarray  # int32
    items: np.ndarray  # int32
    ratings: np.ndarray  # float32
    n_users: int
    n_items: int

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, user_map: IdMap, item_map: IdMap) -> "Interactions":
        """Index a frame with columns user, item, rating; ids missing from a map become -1."""
        return cls(
            users=user_map.index(frame["user"]),
            items=item_map.index(frame["item"]),
            ratings=frame["rating"].to_numpy(dtype=np.float32),
            n_users=len(user_map),
            n_items=len(item_map),
        )

    def __len__(self) -> int:
        return len(self.users)

    def item_counts(self) -> np.ndarray:
        """Number of known-user ratings of each item (length n_items)."""
        known = (self.users >= 0) & (self.items >= 0)
        return np.bincount(self.items[known], minlength=self.n_items)

    def by_user(self) -> "UserItems":
        """Each known user's items with their ratings (unknown users and items are left out)."""
        return UserItems.from_pairs(self.users, self.items, self.n_users, self.ratings)


@dataclass(frozen=True)
class UserItems:
    """A sparse user -> items relation in CSR form (indptr, indices), items sorted within a user, with each
    pair's rating (`ratings`, parallel to indices) when it was built from ratings."""

    indptr: np.ndarray  # int64, length n_users + 1
    indices: np.ndarray  # int32
    ratings: np.ndarray | None = None  # float32

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, n_users: int, ratings: np.ndarray | None = None
    ) -> "UserItems":
        """Build from parallel index arrays (and ratings); pairs with a negative index are dropped, a pair given
        twice is kept once, with its last rating."""
        keep = (users >= 0) & (items >= 0)
        u = users[keep].astype(np.int64)
        i = items[keep].astype(np.int64)
        order = np.lexsort((i, u))  # stable: a repeated pair's last occurrence comes last
        u, i = u[order], i[order]
        r = None if ratings is None else np.asarray(ratings, np.float32)[keep][order]
        if len(u):
            last = np.ones(len(u), dtype=bool)
            last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
            u, i = u[last], i[last]
            r = None if r is None else r[last]
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
        return cls(indptr=indptr, indices=i.astype(np.int32), ratings=r)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def items_of(self, user: int) -> np.ndarray:
        """Item indices of one user (empty for an out-of-range user)."""
        if user < 0 or user >= self.n_users:
            return np.empty(0, dtype=np.int32)
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs for a batch of users: row is the position in `users`. Unknown users have none."""
        row, at = self._positions(users)
        return row, self.indices[at]

    def rated_rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, item, rating) for a batch of users, as `rows`; rating 1 for each pair of a relation without
        ratings."""
        row, at = self._positions(users)
        ratings = np.ones(len(at), np.float32) if self.ratings is None else self.ratings[at]
        return row, self.indices[at], ratings

    def _positions(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each pair's row (position in `users`) and its position in `indices`."""
        users = np.asarray(users, dtype=np.int64)
        valid = (users >= 0) & (users < self.n_users)
        starts = np.where(valid, self.indptr[np.clip(users, 0, self.n_users - 1) if self.n_users else 0], 0)
        ends = np.where(valid, self.indptr[np.clip(users, 0, self.n_users - 1) + 1] if self.n_users else 0, 0)
        lengths = ends - starts
        total = int(lengths.sum())
        row = np.repeat(np.arange(len(users), dtype=np.int32), lengths)
        if total == 0:
            return row, np.empty(0, dtype=np.int64)
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return row, np.arange(total) + offsets

    def counts(self) -> np.ndarray:
        """Number of items of each user."""
        return np.diff(self.indptr)
