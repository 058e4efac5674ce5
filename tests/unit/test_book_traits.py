"""A real book's traits read from goodbooks' columns (`bookrec.worker.learn.book_traits`): what synthetic readers'
tastes follow, and what ships with bookrec for them to read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest

from bookrec.worker.learn.book_traits import era, first_author, language, series, traits
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("title", "placed"),
    [
        ("The Hunger Games (The Hunger Games, #1)", ("The Hunger Games", 1.0)),
        ("Guilty Pleasures (Anita Blake, Vampire Hunter, #1)", ("Anita Blake, Vampire Hunter", 1.0)),
        ("Midnight Sun (Twilight, #1.5)", ("Twilight", 1.5)),
        ("The Lord of the Rings (The Lord of the Rings, #1-3)", ("The Lord of the Rings", 1.0)),
        ("The Colour of Magic (Discworld, #1; Rincewind #1)", ("Discworld", 1.0)),
        ("Dune (Dune Chronicles #1)", ("Dune Chronicles", 1.0)),
        ("The Silmarillion (Middle-Earth Universe)", None),
        ("The Great Gatsby", None),
        (None, None),
    ],
)
def test_a_title_s_series_and_number(title: str | None, placed: tuple[str, float] | None) -> None:
    assert series(title) == placed


def test_authors_eras_and_languages() -> None:
    assert first_author("J.K. Rowling, Mary GrandPré") == "J.K. Rowling" and first_author(" ") is None
    assert [era(y) for y in (-750, 1813, 1937, 1954, 1997, 2005, 2017, None, float("nan"))] == [
        "before 1800", "1800-1899", "1900-1949", "1950-1979", "1980-1999", "2000-2009", "2010 on", None, None,
    ]  # fmt: skip
    assert [language(c) for c in ("eng", "en-US", "en-GB", "en", "EN-CA", "fre", "", None)] == [
        "eng", "eng", "eng", "eng", "eng", "fre", None, None,
    ]  # fmt: skip


def test_traits_of_a_catalogue_with_some_columns_missing() -> None:
    books = pd.DataFrame({"title": ["A (S, #2)", "B"], "authors": ["X, Y", ""]}, index=["7", "8"])

    found = traits(books)

    assert found.to_dict("index") == {
        "7": {"author": "X", "series": "S", "number": 2.0, "era": None, "language": None},
        "8": {"author": None, "series": None, "number": None, "era": None, "language": None},
    }


def test_the_catalogue_ships_as_package_data_with_its_licence_and_attribution() -> None:
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = shipped["bookrec.worker.learn.goodbooks"]

    assert sorted(files) == ["LICENSE", "README.md", "books.csv"]
    assert all((GOODBOOKS_BOOKS.parent / name).is_file() for name in files)
    assert GOODBOOKS_BOOKS.read_bytes().count(b"\n") == 10_001
