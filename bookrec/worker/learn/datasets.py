"""Reading ratings and book files into tidy frames, with errors that say what is wrong and how to fix it.

Columns are found by name, never by position, so goodbooks (either header order), MovieLens
and header-less TSV files like MovieLens 100K `u.data` all read the same way. Ids of any form
become strings; ratings become float32. Every problem a user can cause raises `DataError`
naming the file and the fix (a flag, a column, an encoding).
"""

from __future__ import annotations

import codecs
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bookrec.shared.errors import DataError
from bookrec.worker.learn.inputs import ReadOptions

log = logging.getLogger(__name__)

# Recognised column names (compared case-insensitively) for each role of a ratings file.
USER_COLUMNS = ("user", "user_id", "userId")
ITEM_COLUMNS = ("item", "item_id", "book_id", "movieId")
RATING_COLUMNS = ("rating",)
TIME_COLUMNS = ("timestamp",)
"""The optional time column `read_ratings(..., keep_time=True)` keeps (compared case-insensitively)."""

_ROLES = {
    "user": (USER_COLUMNS, "--user-col"),
    "item": (ITEM_COLUMNS, "--item-col"),
    "rating": (RATING_COLUMNS, "--rating-col"),
}
_CHUNK_BYTES = 1 << 20
_NO_HEADER_HINT = (
    "if the file has no header, name its columns with --names (e.g. --names user,item,rating,timestamp); otherwise "
)


@dataclass
class RatingsData:
    """Ratings in a frame with columns user (str), item (str) and rating (float32): read from a file (`path`), or
    taken in from a ratings store snapshot (`path` None) whose summary is `snapshot`."""

    frame: pd.DataFrame
    path: Path | None
    duplicates_dropped: int
    columns: dict  # role ("user", "item", "rating") -> source column name
    snapshot: dict[str, Any] | None = None
    """For a ratings store snapshot: {"source": "store", "url", "rows", "users", "items", "newest_updated_at",
    "last_stream_id"}, recorded as is in the version's metadata; None for a file."""
    rows_sha256: str | None = None
    """For in-memory ratings: `rows_sha256` of the frame (a file's sha256 is that of its bytes)."""

    @property
    def source(self) -> str:
        """Where the ratings come from, for messages: the file's path, or `ratings store URL`."""
        return str(self.path) if self.path is not None else f"ratings store {self.snapshot['url']}"

    def digest(self) -> dict[str, Any]:
        """{"sha256", "bytes"}: of the file's bytes, or for in-memory ratings of their sorted rows (bytes None)."""
        if self.path is not None:
            return fingerprint(self.path)
        return {"sha256": self.rows_sha256, "bytes": None}


def read_ratings(path: str | Path, options: ReadOptions = ReadOptions(), keep_time: bool = False) -> RatingsData:
    """Read a CSV/TSV ratings file, finding the user, item and rating columns by name.

    Args:
        path: the ratings file.
        options: column overrides, separator, or column names for a header-less file.
        keep_time: also keep the file's `timestamp` column, if it has one, as a float64 `timestamp`
            column of the frame (numbers as given, e.g. MovieLens' Unix seconds).

    Returns:
        The ratings with string ids and float32 ratings, rows in file order; for duplicate (user, item)
        pairs only the last occurrence is kept.

    Raises:
        DataError: the file is missing, unreadable, lacks a column, or holds a bad rating, id or kept time.
    """
    path = _check_file(Path(path))
    sep = _separator(path, options.sep)
    header = _header(path, sep, options.names)
    columns = {role: _find_column(path, role, header, options) for role in _ROLES}
    if not any(columns.values()):
        hint = "" if options.names else _NO_HEADER_HINT
        raise DataError(
            f"{path}: no user, item or rating column among {_listing(header)}; {hint}"
            "pick columns with --user-col, --item-col and --rating-col"
        )
    _require_columns(path, columns, header)
    time_column = _time_column(header) if keep_time else None
    raw = _read_csv(
        path,
        sep=sep,
        header=None if options.names else "infer",
        names=list(options.names) if options.names else None,
        usecols=[*columns.values(), *([time_column] if time_column else [])],
        dtype={columns["user"]: str, columns["item"]: str},
    )
    if raw.empty:
        raise DataError(f"{path}: the file has no rows of ratings; check that it is the right file")
    first_line = 1 if options.names else 2
    named = {**columns, **({"timestamp": time_column} if time_column else {})}
    frame, dropped = _tidy(str(path), raw.rename(columns={v: k for k, v in named.items()}), named, first_line)
    return RatingsData(frame=frame, path=path, duplicates_dropped=dropped, columns=columns)


def ratings_from_frame(frame: pd.DataFrame, snapshot: dict[str, Any]) -> RatingsData:
    """Ratings held in memory (a frame with columns user, item, rating; a ratings store snapshot's rows), checked
    as `read_ratings` checks a file's: ids become strings, ratings finite float32, the last of duplicate pairs kept.

    Args:
        frame: the rows, in any order.
        snapshot: what they are, recorded in the version's metadata; its `url` names them in messages.

    Raises:
        DataError: there are no rows (saying how to fill the store), or one has a missing or non-finite rating or
            an empty id.
    """
    source = f"ratings store {snapshot['url']}"
    if frame.empty:
        raise DataError(
            f"the {source} holds no ratings; fill it with `bookrec data import ratings.csv` (or send ratings to the "
            "stream and run `bookrec ingest`), or name a ratings file"
        )
    columns = {"user": "user", "item": "item", "rating": "rating"}
    tidy, dropped = _tidy(source, frame, columns, first_line=1, unit="row")
    return RatingsData(tidy, None, dropped, columns, snapshot=snapshot, rows_sha256=rows_sha256(tidy))


def rows_sha256(frame: pd.DataFrame) -> str:
    """The sha256 (hex) of ratings rows sorted by user then item: the same rows give the same digest, in any order.

    Hashed: the user ids, then the item ids (each joined by NUL, UTF-8), then the ratings as float32 bytes."""
    ordered = frame.sort_values(["user", "item"], kind="stable")
    digest = hashlib.sha256()
    for column in ("user", "item"):
        digest.update("\0".join(ordered[column].tolist()).encode())
        digest.update(b"\1")
    digest.update(ordered["rating"].to_numpy(dtype=np.float32).tobytes())
    return digest.hexdigest()


def _tidy(
    source: str, raw: pd.DataFrame, columns: dict[str, str], first_line: int, unit: str = "line"
) -> tuple[pd.DataFrame, int]:
    """(frame with str ids and float32 ratings, duplicates dropped) from raw columns user, item, rating (and
    timestamp, kept as float64, if present); DataError naming `source`, the column (by its name in `columns`) and
    the first bad line or row."""
    users, user_ids = _ids(source, raw["user"], columns["user"], first_line, unit)
    items, item_ids = _ids(source, raw["item"], columns["item"], first_line, unit)
    ratings = _ratings(source, raw["rating"], columns["rating"], first_line, unit)
    keep = _last_of_each_pair(source, users, items)
    frame = pd.DataFrame({"user": user_ids[users[keep]], "item": item_ids[items[keep]], "rating": ratings[keep]})
    if "timestamp" in raw:
        frame["timestamp"] = _times(source, raw["timestamp"], columns["timestamp"], first_line, unit)[keep]
    return frame, len(users) - len(keep)


BOOK_KEY_COLUMNS = ("id", *ITEM_COLUMNS)
"""Recognised item id columns of a books file, in order of preference: `id` first, the key of goodbooks' older
release (whose `book_id` is the goodreads id)."""
TITLE_COLUMNS = ("title", "original_title")
"""A books file's title columns: the first one present, blanks filled from the second (compared case-insensitively)."""
OPTIONAL_BOOK_COLUMNS = {
    "authors": ("authors", "author"),
    "year": ("original_publication_year", "year"),
    "image_url": ("image_url",),
}
"""The optional columns of a books file by role, each role's recognised names in order (compared case-insensitively)."""
GOODBOOKS_NAMES = {"authors": "authors", "year": "original_publication_year", "image_url": "image_url"}
"""The goodbooks column each optional role is stored under in the ratings store's catalogue."""


@dataclass(frozen=True)
class BookColumns:
    """The columns of a books file, by role: `key` (the item id), `titles` (the title, then its fallback), and the
    optional `authors`, `year` and `image_url` (None when the file has none)."""

    key: str
    titles: tuple[str, ...]
    authors: str | None
    year: str | None
    image_url: str | None


def book_columns(path: str | Path, options: ReadOptions = ReadOptions()) -> BookColumns:
    """Find a books file's columns by name: the item id (`--item-col`, else `id`, `book_id`, `item_id`, `item` or
    `movieId`), the title (`--title-col`, else `title` falling back to `original_title`), and the optional authors
    (`authors`, `author`), year (`original_publication_year`, `year`) and cover (`image_url`).

    Raises:
        DataError: the file is missing or unreadable, a named column is absent, or it has no id or title column.
    """
    path = _check_file(Path(path))
    header = _header(path, _separator(path, None), None)
    key = _named(path, header, options.item_col, "--item-col") or _recognised(header, BOOK_KEY_COLUMNS)
    titles = (_named(path, header, options.title_col, "--title-col"),) if options.title_col else ()
    titles = titles or tuple(filter(None, (_recognised(header, (name,)) for name in TITLE_COLUMNS)))
    missing = ([] if key else ["book_id"]) + ([] if titles else ["title"])
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (a books file needs an id column, one of "
            f"{', '.join(BOOK_KEY_COLUMNS)} or another named by --item-col, and a title column, {' or '.join(TITLE_COLUMNS)} "
            f"or another named by --title-col; authors, year and image_url are optional); columns found: {_listing(header)}"
        )
    optional = {role: _recognised(header, names) for role, names in OPTIONAL_BOOK_COLUMNS.items()}
    return BookColumns(key, titles, **optional)


def read_books(path: str | Path, options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Read a books file (goodbooks' books.csv, MovieLens' movies.csv, any CSV or TSV with an id and a title) into a
    frame indexed by item id string (index name `book_id`), its columns found by name (`book_columns`).

    Columns: title (str), authors (str or None), year (int or None), image_url (str or None); a file without
    the optional column has None throughout.

    Raises:
        DataError: the file is missing, unreadable, empty, lacks a needed column or repeats an item id.
    """
    raw, columns = _book_frame(path, options)
    title = raw[columns.titles[0]]
    for fallback in columns.titles[1:]:
        title = title.fillna(raw[fallback])
    values = {
        "title": title.fillna("").tolist(),
        "authors": _optional_text(raw, columns.authors),
        "year": _optional_years(raw, columns.year),
        "image_url": _optional_text(raw, columns.image_url),
    }
    index = pd.Index(raw.index, dtype=object, name="book_id")
    # object dtype keeps None as None for year and image_url (an inferred dtype would turn it into NaN).
    return pd.DataFrame({name: pd.Series(v, index=index, dtype=object) for name, v in values.items()})


def read_book_table(path: str | Path, options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Read a books file whole, checked as `read_books` checks it, as text ('' when blank) under goodbooks' newer
    column names: the item id as `book_id`, first (the older release's `book_id` becomes `goodreads_book_id`), the
    title as `title`, the optional columns as `authors`, `original_publication_year` and `image_url`; other columns as
    they are. Rows in file order.

    Raises:
        DataError: as `read_books`.
    """
    raw, columns = _book_frame(path, options, dtype=str, keep_default_na=False)
    renamed = {columns.titles[0]: "title"}
    renamed.update({getattr(columns, role): name for role, name in GOODBOOKS_NAMES.items() if getattr(columns, role)})
    if columns.key.lower() == "id" and "book_id" in raw.columns and "goodreads_book_id" not in raw.columns:
        renamed["book_id"] = "goodreads_book_id"  # the older release: `id` is the catalogue id, `book_id` goodreads'
    # A column already holding a name another column takes (a `title` beside --title-col's) gives way to it.
    displaced = [c for c in raw.columns if c in renamed.values() and c not in renamed]
    table = raw.drop(columns=[columns.key, *displaced]).rename(columns=renamed)
    table.insert(0, "book_id", list(raw.index))
    return table.reset_index(drop=True)


def read_book_rows(path: str | Path, options: ReadOptions = ReadOptions()) -> list[dict[str, str]]:
    """`read_book_table` as one dict per book (what `RatingsStore.import_books` takes).

    Raises:
        DataError: as `read_books`.
    """
    return read_book_table(path, options).to_dict("records")


def _book_frame(path: str | Path, options: ReadOptions, **kwargs: Any) -> tuple[pd.DataFrame, BookColumns]:
    """A books file's rows indexed by their id strings (checked: present, each once), and its columns."""
    columns = book_columns(path, options)
    path = Path(path)
    text = {c: str for c in (columns.key, *columns.titles, columns.authors) if c}
    raw = _read_csv(path, sep=_separator(path, None), dtype=kwargs.pop("dtype", text), **kwargs)
    if raw.empty:
        raise DataError(f"{path}: the file has no rows of books; check that it is the right file")
    keys = raw[columns.key]
    codes, distinct = _ids(str(path), keys.mask(keys == ""), columns.key, first_line=2)
    ids = distinct[codes]
    _require_unique(path, ids, columns.key)
    return raw.set_index(pd.Index(ids, dtype=object)), columns


def _named(path: Path, header: list[str], name: str | None, flag: str) -> str | None:
    """The column a flag names (None if not given); DataError if the file has no such column."""
    if name is None:
        return None
    if name not in header:
        raise DataError(f"{path}: no column {name!r} (given by {flag}); columns found: {_listing(header)}")
    return name


def _recognised(header: list[str], names: Sequence[str]) -> str | None:
    """The header's column for the first of `names` present (compared case-insensitively), or None."""
    lowered = {c.lower(): c for c in reversed(header)}
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def fingerprint(path: str | Path) -> dict[str, Any]:
    """The sha256 (hex) and size in bytes of a file, read in chunks so any size fits in memory."""
    path = _check_file(Path(path))
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def _check_file(path: Path) -> Path:
    if path.is_dir():
        raise DataError(f"{path} is a directory; give the path of a file inside it")
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; give the path of a CSV or TSV file")
    return path


def _separator(path: Path, sep: str | None) -> str:
    if sep is None:
        return "\t" if path.suffix.lower() == ".tsv" else ","
    return "\t" if sep in ("\\t", "tab") else sep


def _header(path: Path, sep: str, names: Sequence[str] | None) -> list[str]:
    """The column names: the given `names` (checked against the first row's width) or the header row."""
    if not names:
        return [str(c) for c in _read_csv(path, sep=sep, nrows=0).columns]
    width = _read_csv(path, sep=sep, header=None, nrows=1).shape[1]
    if len(names) != width:
        raise DataError(
            f"{path}: --names gives {len(names)} names ({','.join(names)}) but the first row has {width} "
            f"fields; give one name per column (check --sep too)"
        )
    if len(set(names)) != len(names):
        raise DataError(f"{path}: --names repeats a name ({','.join(names)}); give each column its own name")
    return list(names)


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """`pd.read_csv` as UTF-8 with its failures turned into DataError naming the file."""
    try:
        return pd.read_csv(path, encoding="utf-8", skipinitialspace=True, **kwargs)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text ({_first_invalid_utf8(path)}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; check that it is the right file") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a well-formed CSV/TSV file ({str(exc).strip()}); check --sep") from None


def _first_invalid_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits, as 'byte 0x.. at offset N, line L'."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                # The decoder may hold back up to 3 bytes of an unfinished character from the previous chunk.
                pending = len(exc.object) - len(chunk)
                bad = offset - pending + exc.start
                line = lines + exc.object[: exc.start].count(b"\n") + 1
                return f"byte 0x{exc.object[exc.start]:02x} at offset {bad}, line {line}"
            if not chunk:
                return "invalid bytes"
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _find_column(path: Path, role: str, header: list[str], options: ReadOptions) -> str | None:
    """The column for `role`: the override if given, else the one recognised name present (None if none)."""
    recognised, flag = _ROLES[role]
    override = options.column_override(role)
    if override is not None:
        if override not in header:
            raise DataError(f"{path}: no column {override!r} (given by {flag}); columns found: {_listing(header)}")
        return override
    wanted = {name.lower() for name in recognised}
    found = [c for c in header if c.lower() in wanted]
    if len(found) > 1:
        raise DataError(f"{path}: columns {', '.join(found)} could each be the {role} column; choose one with {flag}")
    return found[0] if found else None


def _require_columns(path: Path, columns: dict[str, str | None], header: list[str]) -> None:
    """Raise DataError unless every role has its own column."""
    for role, column in columns.items():
        recognised, flag = _ROLES[role]
        if column is None:
            raise DataError(
                f"{path}: no {role} column (looked for {', '.join(recognised)}); columns found: "
                f"{_listing(header)}; name it with {flag}"
            )
    if len(set(columns.values())) < len(columns):
        roles = ", ".join(f"{role}={column}" for role, column in columns.items())
        raise DataError(f"{path}: one column is used for two roles ({roles}); give each role its own column")


def _time_column(header: list[str]) -> str | None:
    """The header's time column (one of TIME_COLUMNS), or None."""
    wanted = {name.lower() for name in TIME_COLUMNS}
    return next((c for c in header if c.lower() in wanted), None)


def _times(source: str, values: pd.Series, column: str, first_line: int, unit: str = "line") -> np.ndarray:
    """Times as float64 (float32 would round Unix seconds to about a minute); missing or non-numeric ones raise
    DataError."""
    numbers = values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    _reject(
        source, ~np.isfinite(numbers), values, f"a missing or non-numeric time in column {column!r}", first_line, unit
    )
    return numbers


def _ids(
    source: str, values: pd.Series, column: str, first_line: int, unit: str = "line"
) -> tuple[np.ndarray, np.ndarray]:
    """Ids as (codes, distinct strings): `distinct[codes]` is the column. Empty ids raise DataError.

    Integer-valued floats such as '42.0' become '42'. The work is done on the distinct values,
    which are few next to the rows.
    """
    _reject(source, values.isna().to_numpy(), values, f"an empty id in column {column!r}", first_line, unit)
    codes, uniques = pd.factorize(values)
    normal = pd.Series(uniques, dtype=object).astype(str).str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
    merged, distinct = pd.factorize(normal)
    return merged[codes], np.asarray(distinct, dtype=object)


def _ratings(source: str, values: pd.Series, column: str, first_line: int, unit: str = "line") -> np.ndarray:
    """Ratings as float32; missing, non-numeric or infinite values raise DataError."""
    numbers = values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(values, errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    problem = f"a missing or non-numeric rating in column {column!r}"
    _reject(source, ~np.isfinite(numbers), values, problem, first_line, unit)
    return numbers.astype(np.float32)


def _reject(source: str, bad: np.ndarray, values: pd.Series, problem: str, first_line: int, unit: str = "line") -> None:
    """Raise DataError if any row is `bad`, counting them and showing the first one's line (or row) and value."""
    count = int(bad.sum())
    if not count:
        return
    first = int(np.argmax(bad))
    value = values.iloc[first]
    shown = "empty" if pd.isna(value) else repr(str(value))
    rows = "1 row has" if count == 1 else f"{count} rows have"
    raise DataError(
        f"{source}: {rows} {problem} (first at {unit} {first + first_line}: {shown}); fix or remove those rows"
    )


def _last_of_each_pair(source: str, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Row numbers to keep so that each (user, item) pair keeps its last rating; logs how many were dropped."""
    pairs = pd.Series(users.astype(np.int64) * (int(items.max()) + 1) + items)
    keep = np.flatnonzero(~pairs.duplicated(keep="last").to_numpy())
    dropped = len(users) - len(keep)
    if dropped:
        log.warning("%s: %d duplicate (user, item) ratings; kept the last of each", source, dropped)
    return keep


def _require_unique(path: Path, ids: np.ndarray, column: str) -> None:
    series = pd.Series(ids)
    repeated = series[series.duplicated()]
    if len(repeated):
        raise DataError(
            f"{path}: book id {repeated.iloc[0]!r} appears more than once in column {column!r} "
            f"({len(repeated)} repeats); each book needs its own id"
        )


def _optional_years(raw: pd.DataFrame, column: str | None) -> list[int | None]:
    """Whole years from `column` (None where missing or not a number, or for every row when `column` is None)."""
    if column is None:
        return [None] * len(raw)
    years = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return [None if np.isnan(y) else int(y) for y in years]


def _optional_text(raw: pd.DataFrame, column: str | None) -> list[str | None]:
    """Text from `column` (None where missing, or for every row when `column` is None)."""
    if column is None:
        return [None] * len(raw)
    return [None if pd.isna(v) else str(v) for v in raw[column]]


def _listing(header: Sequence[str]) -> str:
    return ", ".join(header) if header else "(none)"
