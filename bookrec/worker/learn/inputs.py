"""What a user tells `learn` about its inputs, importable without numpy or pandas (the CLI builds its flags from it):
how to read a ratings file and a books file, the sizes of the synthetic catalogues, and the real catalogue bookrec
ships.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

GOODBOOKS_BOOKS = Path(__file__).resolve().with_name("goodbooks") / "books.csv"
"""goodbooks-10k's books.csv, shipped with bookrec (10,000 real books; goodbooks-10k, Zygmunt Zając, CC BY-SA 4.0:
its LICENSE and README beside it): the catalogue synthetic readers rate unless another is named."""

PRESETS = {
    "goodbooks": dict(users=53424, books=10000, ratings=981756),
    "small": dict(users=2000, books=1000, ratings=60000),
}
"""Synthetic catalogue sizes (`bookrec data synth --preset`, `bookrec init --preset`): goodbooks-10k's shape, and a
small one. Over a real catalogue, `books` is how many of its most-rated books the readers rate."""


@dataclass(frozen=True)
class ReadOptions:
    """How to read a ratings file, and a books file, when their defaults (recognised names, separator by extension)
    do not fit. `item_col` names the item column of both; `title_col` is the books file's, the others the ratings
    file's."""

    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    sep: str | None = None
    names: tuple[str, ...] | None = None
    title_col: str | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "ReadOptions":
        """Build options from parsed `add_read_options` flags (`--names a,b,c` becomes a tuple)."""
        names = getattr(ns, "names", None)
        return cls(
            user_col=getattr(ns, "user_col", None),
            item_col=getattr(ns, "item_col", None),
            rating_col=getattr(ns, "rating_col", None),
            sep=getattr(ns, "sep", None),
            names=tuple(n.strip() for n in names.split(",")) if names else None,
            title_col=getattr(ns, "title_col", None),
        )

    def column_override(self, role: str) -> str | None:
        """The column name given for `role` ("user", "item" or "rating"), or None."""
        return getattr(self, f"{role}_col")


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """Add `--user-col --item-col --rating-col --sep --names` (read by `ReadOptions.from_args`) to `parser`."""
    group = parser.add_argument_group(
        "reading the ratings file",
        "Columns are found by name: user (user, user_id, userId), item (item, item_id, book_id, movieId), "
        "rating (rating). Extra columns are ignored.",
    )
    group.add_argument("--user-col", metavar="NAME", help="column holding the user id, if not a recognised name")
    group.add_argument(
        "--item-col",
        metavar="NAME",
        help="column holding the item (book) id, if not a recognised name; a books file read too must have it",
    )
    group.add_argument("--rating-col", metavar="NAME", help="column holding the rating, if not a recognised name")
    group.add_argument(
        "--sep",
        metavar="SEP",
        help=r"field separator; '\t' or 'tab' means tab (default: tab for .tsv files, else comma)",
    )
    group.add_argument(
        "--names",
        metavar="A,B,...",
        help="the file has no header: name its columns in order, e.g. user,item,rating,timestamp",
    )


def add_book_options(parser: argparse.ArgumentParser, item_col: bool) -> None:
    """Add `--title-col` (read by `ReadOptions.from_args`) to `parser`, and `--item-col` when `item_col` (a command
    that reads no ratings file; `add_read_options` adds it to the others, for both files)."""
    group = parser.add_argument_group(
        "reading the books file",
        "Columns are found by name: item id (id, item, item_id, book_id, movieId), title (title, else "
        "original_title), and the optional authors (authors, author), year (original_publication_year, year) and "
        "image_url. Extra columns are ignored.",
    )
    if item_col:
        group.add_argument(
            "--item-col", metavar="NAME", help="column holding the item (book) id, if not a recognised name"
        )
    group.add_argument("--title-col", metavar="NAME", help="column holding the title, if not a recognised name")
