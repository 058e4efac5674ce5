"""What places a real book among the others, read from a goodbooks-style catalogue: its first author, its series
and its number in it (goodbooks titles end in "(Series, #n)"), its era and its language.

Synthetic readers' tastes follow these traits (`synth.synthesise_readers`), and the demo picks the books a reader
rates by them. Every trait is optional: a book without an author, a series, a year or a language code has none.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

TRAITS = ("author", "series", "era", "language")
"""The traits a reader's taste can follow, as columns of `traits`."""

ERA_STARTS = (1800, 1900, 1950, 1980, 2000, 2010)
"""Eras begin at these years: before 1800, the 1800s, 1900-1949, 1950-1979, 1980-1999, 2000-2009, 2010 on."""
ENGLISH = "eng"
"""goodbooks writes English as eng, en-US, en-GB, en-CA or en: all of them are this one language."""

_LAST_PARENS = re.compile(r"\(([^()]*)\)\s*$")
_SERIES_PART = re.compile(r"^\s*(?P<name>.+?),?\s*#\s*(?P<number>\d+(?:\.\d+)?)")


def series(title: str | None) -> tuple[str, float] | None:
    """(series name, number in it) of a goodbooks title ending in "(Name, #n)" ("#1-3" counts as 1; of a book in
    two series, "(A, #1; B #4)", the first), else None."""
    found = _LAST_PARENS.search(title) if isinstance(title, str) else None
    if found is None:
        return None
    part = _SERIES_PART.match(found.group(1).split(";")[0])
    return (part["name"].strip(), float(part["number"])) if part else None


def first_author(authors: str | None) -> str | None:
    """The first of a comma-separated list of authors ("J.K. Rowling, Mary GrandPré" -> "J.K. Rowling"), or None."""
    first = authors.split(",")[0].strip() if isinstance(authors, str) else ""
    return first or None


def era(year: float | None) -> str | None:
    """The era a publication year falls in (see ERA_STARTS), as a label such as "1950-1979"; None without a year."""
    if year is None or pd.isna(year):
        return None
    at = int(np.searchsorted(ERA_STARTS, year, side="right"))
    if at == 0:
        return f"before {ERA_STARTS[0]}"
    if at == len(ERA_STARTS):
        return f"{ERA_STARTS[-1]} on"
    return f"{ERA_STARTS[at - 1]}-{ERA_STARTS[at] - 1}"


def language(code: str | None) -> str | None:
    """A language code with English's spellings made one (`ENGLISH`); None when blank."""
    code = code.strip().lower() if isinstance(code, str) else ""
    if not code:
        return None
    return ENGLISH if code == "en" or code.startswith(("en-", "eng")) else code


def traits(books: pd.DataFrame) -> pd.DataFrame:
    """One row per book of a catalogue (goodbooks column names: `title`, `authors`, `original_publication_year`,
    `language_code`; any may be missing, a blank or NaN is none): its `author`, `series`, `number` (in the series),
    `era` and `language`, None where the book has none. The index is `books`'s."""
    column = lambda name: books[name] if name in books else pd.Series([None] * len(books), index=books.index)  # noqa: E731
    placed = [series(t) for t in column("title")]
    years = pd.to_numeric(column("original_publication_year"), errors="coerce")
    return pd.DataFrame(
        {
            "author": [first_author(a) for a in column("authors")],
            "series": [p[0] if p else None for p in placed],
            "number": [p[1] if p else None for p in placed],
            "era": [era(y) for y in years],
            "language": [language(c) for c in column("language_code")],
        },
        index=books.index,
        dtype=object,  # keeps None as None (numbers and text alike)
    )
