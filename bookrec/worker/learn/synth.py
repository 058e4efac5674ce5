"""Synthetic ratings with learnable structure, in goodbooks' format: readers of a real catalogue, and a latent-factor
catalogue for full-scale benchmarks.

Two worlds, one way of drawing from them. `synthesise_readers` (the demo, `bookrec init`, `bookrec data synth`):
readers of real books (goodbooks-10k's, which bookrec ships, or another books file), each book as popular as its
real `ratings_count` and as good as its real `average_rating`, each reader with a few favourite authors and series, a
leaning per publication era and a language (`book_traits`), so a reader who rated Tolkien rates more Tolkien.
`synthesise` (the benchmarks, `bookrec data synth --latent`): users and books with latent factors (tastes), book
popularity a power law over the book ids.

In both, user activity is lognormal; each user's books are drawn without replacement from softmax(popularity +
affinity) with the Gumbel-top-k trick, a chunk of users at a time so memory stays bounded; each rating is mean + book
quality + user bias + affinity + noise, rounded and clipped to 1..5 stars. The same arguments and seed give
byte-identical files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TextIO

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError
from bookrec.shared.files import atomic_text
from bookrec.worker.learn import book_traits
from bookrec.worker.learn.datasets import read_book_table, read_books
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS

BOOK_COLUMNS = (
    "book_id", "goodreads_book_id", "best_book_id", "work_id", "books_count", "isbn", "isbn13", "authors",
    "original_publication_year", "original_title", "title", "language_code", "average_rating",
    "ratings_count", "work_ratings_count", "work_text_reviews_count", "ratings_1", "ratings_2", "ratings_3",
    "ratings_4", "ratings_5", "image_url", "small_image_url",
)  # fmt: skip
# The placeholders goodbooks itself uses for books without a cover.
NO_PHOTO_URL = "https://s.gr-assets.com/assets/nophoto/book/111x148-bcc042a9c91a29c1d680899eff700a03.png"
NO_PHOTO_SMALL_URL = "https://s.gr-assets.com/assets/nophoto/book/50x75-a91bf249278a81aabab721ef782c4a74.png"
_MEDIUM_COVER = re.compile(r"(/books/\d+)m/")

FACTORS = 8
# Popularity logit = log(rank ** -EXPONENT + FLOOR / books) + noise: book 1 is the most popular, as in
# goodbooks; the floor keeps the far tail read at all, the noise makes the order only rough.
POPULARITY_EXPONENT = 1.1
POPULARITY_FLOOR = 1.0
POPULARITY_NOISE_SD = 0.3
TASTE_SD = 2.0  # spread of a user-book affinity logit: how much taste, beside popularity, decides what is read
ACTIVITY_SIGMA = 1.0  # lognormal spread of ratings per user
MEAN_RATING = 3.3  # before the lift from users picking books they like
QUALITY_SD = 0.35
USER_BIAS_SD = 0.35
AFFINITY_EFFECT = 0.225  # stars per unit of affinity logit
NOISE_SD = 0.75
CHUNK_CELLS = 4_000_000  # users per chunk = CHUNK_CELLS // books, so each float32 work array is ~16 MB

# Readers of a real catalogue (`synthesise_readers`); logits are beside the popularity logit.
POPULARITY_PER_LOG_COUNT = 0.8  # popularity logit per unit of log(ratings_count): the real head, somewhat flattened
EXTRA_FAVOURITE_AUTHORS = 3.0  # each reader has 1 + Poisson(this) favourite authors
FAVOURITE_SERIES = 2.0  # and Poisson(this) favourite series
FAVOURITE_SKEW = 0.5  # a favourite is drawn in proportion to (its books' ratings_count summed) ** this
AUTHOR_LIKE = 4.0  # logit of each book by a favourite author
SERIES_LIKE = 2.5  # logit of each book of a favourite series (on top of its author's)
ERA_SD = 1.0  # spread of a reader's leaning toward each publication era
LANGUAGE_LIKE = 2.5  # logit of a book in the reader's own language; minus this for another language but English
STAR_SHIFT = -0.8  # stars a synthetic rating sits from the book's real average rating, before the reader's lift
READER_NOISE_SD = 0.95  # a rating's own noise: wider than the latent catalogue's, for goodbooks' share of 1 to 3 stars

Progress = Callable[[int, int], None]


def synthesise(
    out_dir: str | Path,
    users: int,
    books: int,
    ratings: int,
    seed: int,
    books_from: str | Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Write goodbooks-format `ratings.csv` and `books.csv` of a latent-factor world into `out_dir` (the benchmarks'
    catalogue: `bench.catalogue`).

    Args:
        out_dir: directory to write into (created if needed); each file appears only when complete.
        users, books: how many; ids are 1..users and 1..books.
        ratings: exact number of (user, book, 1-5 stars) rows, no pair repeated; every user rates at
            least 3 books (1 if there are too few ratings for that).
        seed: the same seed gives byte-identical files.
        books_from: a real goodbooks books.csv whose titles, authors, years and cover urls the books
            take, in file order (cycled with a "(copy N)" suffix when `books` is larger).
        progress: called as progress(done_users, total_users) after each chunk of users.

    Returns:
        A summary: paths written, counts, seed and the minimum ratings per user.

    Raises:
        ValidationError: an argument is out of range. DataError: `books_from` cannot be read.
    """
    _validate(users, books, ratings, seed)
    out = _output_dir(Path(out_dir))
    catalogue = read_books(books_from) if books_from is not None else None
    rng = np.random.default_rng(seed)
    world = _World.draw(rng, users, books)
    counts = _activity(rng, users, books, ratings)
    ratings_path, books_path = out / "ratings.csv", out / "books.csv"
    # Nested, so that a failure anywhere leaves both files as they were.
    with atomic_text(ratings_path) as ratings_file:
        stars = _write_ratings(ratings_file, rng, world, counts, progress)
        with atomic_text(books_path) as books_file:
            _book_table(rng, books, stars, catalogue).to_csv(books_file, index=False, lineterminator="\n")
    return _summary(
        out, users, books, ratings, seed, str(books_from) if books_from is not None else None, "latent", counts
    )


def _summary(
    out: Path,
    users: int,
    books: int,
    ratings: int,
    seed: int,
    books_from: str | None,
    generator: str,
    counts: np.ndarray,
) -> dict:
    """What a synthesis wrote into `out`: the two files' paths, the counts, the seed, where the books came from, the
    generator and the fewest ratings of a reader (the JSON of `bookrec data synth`)."""
    return {
        "ratings_path": str(out / "ratings.csv"),
        "books_path": str(out / "books.csv"),
        "users": users,
        "books": books,
        "ratings": ratings,
        "seed": seed,
        "books_from": books_from,
        "generator": generator,
        "min_ratings_per_user": int(counts.min()),
    }


def synthesise_readers(
    out_dir: str | Path,
    users: int,
    ratings: int,
    seed: int,
    books: int | None = None,
    catalogue: str | Path = GOODBOOKS_BOOKS,
    progress: Progress | None = None,
) -> dict:
    """Write `ratings.csv` (user_id, book_id, rating) by synthetic readers of a real catalogue, and `books.csv`, that
    catalogue's rows of the books they rate, into `out_dir` (see the module for how readers choose and rate).

    Args:
        out_dir: directory to write into (created if needed); each file appears only when complete.
        users: how many readers; ids are 1..users.
        ratings: exact number of (reader, book, 1-5 stars) rows, no pair repeated; every reader rates at least 3
            books (1 if there are too few ratings for that).
        seed: the same seed gives byte-identical files.
        books: how many of the catalogue's books the readers rate, the most rated first (by its `ratings_count`;
            in file order without one); None: all of them. Their ids are the catalogue's.
        catalogue: a books file (`datasets.read_books`'s columns; goodbooks' `ratings_count`, `average_rating`,
            `language_code` and "(Series, #n)" titles give the readers more to follow); default goodbooks-10k's.
        progress: called as progress(done_readers, total_readers) after each chunk of readers.

    Returns:
        A summary: paths written, counts, seed, the catalogue and the minimum ratings per reader.

    Raises:
        ValidationError: an argument is out of range (`books` more than the catalogue holds). DataError: the
            catalogue cannot be read.
    """
    table = read_book_table(catalogue)
    books = len(table) if books is None else books
    _validate(users, books, ratings, seed)
    if books > len(table):
        raise ValidationError(
            f"{catalogue} holds {len(table):,} books; readers can rate at most that many, not {books:,}"
        )
    out = _output_dir(Path(out_dir))
    chosen = _most_rated(table, books)
    rng = np.random.default_rng(seed)
    world = _Readers.draw(rng, users, chosen)
    counts = _activity(rng, users, books, ratings)
    ratings_path, books_path = out / "ratings.csv", out / "books.csv"
    with atomic_text(ratings_path) as ratings_file:
        _write_ratings(ratings_file, rng, world, counts, progress)
        with atomic_text(books_path) as books_file:
            chosen.to_csv(books_file, index=False, lineterminator="\n")
    return _summary(out, users, books, ratings, seed, str(catalogue), "readers of real books", counts)


def _most_rated(table: pd.DataFrame, books: int) -> pd.DataFrame:
    """The `books` rows with the largest `ratings_count` (ties and a catalogue without one: file order), in file
    order."""
    count = _numbers(table, "ratings_count")
    order = np.argsort(-np.nan_to_num(count, nan=-1.0), kind="stable") if count is not None else np.arange(len(table))
    return table.iloc[np.sort(order[:books])].reset_index(drop=True)


def _numbers(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """A column of text as float64 (NaN where blank or not a number), or None if the table has no such column."""
    if column not in table:
        return None
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _validate(users: int, books: int, ratings: int, seed: int) -> None:
    for name, value in (("users", users), ("books", books), ("ratings", ratings), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValidationError(f"{name} must be a whole number, got {value!r}")
    if users < 1 or books < 1:
        raise ValidationError(f"users and books must each be at least 1 (got users={users}, books={books})")
    if seed < 0:
        raise ValidationError(f"seed must be 0 or more, got {seed}")
    if not users <= ratings <= users * books:
        raise ValidationError(
            f"ratings must be between users ({users:,}: one each) and users x books ({users * books:,}: "
            f"everyone rates everything), got {ratings:,}"
        )


def _output_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValidationError(f"{out} exists and is not a directory; choose another --out") from None
    except OSError as exc:
        raise ValidationError(f"cannot create output directory {out}: {exc.strerror}") from None
    return out


class _Tastes(Protocol):
    """What ratings are drawn from: per book a popularity logit and a quality in stars, per user a bias in stars,
    and each user's affinity logit for each book."""

    popularity: np.ndarray
    quality: np.ndarray
    user_bias: np.ndarray
    mean: float  # stars of an average rating before quality, bias and affinity
    noise: float  # the sd of a rating's own noise, in stars

    @property
    def users(self) -> int: ...

    @property
    def books(self) -> int: ...

    @property
    def book_ids(self) -> np.ndarray: ...

    def affinity(self, users: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class _World:
    """The hidden truth a latent-factor catalogue is drawn from: tastes, popularity, quality and bias."""

    user_factors: np.ndarray  # users x FACTORS
    book_factors: np.ndarray  # books x FACTORS
    popularity: np.ndarray  # per book, a logit
    quality: np.ndarray  # per book, in stars
    user_bias: np.ndarray  # per user, in stars

    @classmethod
    def draw(cls, rng: np.random.Generator, users: int, books: int) -> "_World":
        """Draw factors scaled so that a user-book affinity (a logit, beside popularity) has sd TASTE_SD."""
        scale = FACTORS**-0.25
        rank = np.arange(1, books + 1)
        popularity = np.log(rank**-POPULARITY_EXPONENT + POPULARITY_FLOOR / books)
        return cls(
            user_factors=(rng.standard_normal((users, FACTORS)) * scale * TASTE_SD).astype(np.float32),
            book_factors=(rng.standard_normal((books, FACTORS)) * scale).astype(np.float32),
            popularity=(popularity + POPULARITY_NOISE_SD * rng.standard_normal(books)).astype(np.float32),
            quality=(QUALITY_SD * rng.standard_normal(books)).astype(np.float32),
            user_bias=(USER_BIAS_SD * rng.standard_normal(users)).astype(np.float32),
        )

    @property
    def users(self) -> int:
        return len(self.user_factors)

    @property
    def books(self) -> int:
        return len(self.book_factors)

    @property
    def book_ids(self) -> np.ndarray:
        """The ids the files give books: 1..books."""
        return np.arange(1, self.books + 1)

    mean = MEAN_RATING
    noise = NOISE_SD

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """users x books affinity logits: the dot products of their factors."""
        return self.user_factors[users] @ self.book_factors.T


@dataclass(frozen=True)
class _Likes:
    """Each reader's favourite values of one trait (CSR: reader r's codes are codes[indptr[r]:indptr[r + 1]]), and
    each book's code of the trait (-1: the book has none)."""

    indptr: np.ndarray
    codes: np.ndarray
    of_book: np.ndarray
    values: int  # how many distinct values the trait has

    @classmethod
    def draw(
        cls, rng: np.random.Generator, users: int, of_book: np.ndarray, weight: np.ndarray, least: int, mean: float
    ) -> "_Likes":
        """`least` + Poisson(`mean`) favourites per reader (repeats allowed), each value drawn in proportion to
        `weight` ** FAVOURITE_SKEW."""
        if not len(weight):
            return cls(np.zeros(users + 1, np.int64), np.empty(0, np.int64), of_book, 0)
        indptr = np.concatenate(([0], np.cumsum(least + rng.poisson(mean, users))))
        chance = weight**FAVOURITE_SKEW
        codes = rng.choice(len(weight), size=int(indptr[-1]), p=chance / chance.sum())
        return cls(indptr, codes, of_book, len(weight))

    def affinity(self, users: np.ndarray, like: float) -> np.ndarray:
        """users x books: `like` where the book's value is among the reader's favourites, else 0."""
        marks = np.zeros((len(users), self.values + 1), np.float32)  # the last column, 0: books without the trait
        starts, lengths = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        rows = np.repeat(np.arange(len(users)), lengths)
        at = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        marks[rows, self.codes[at]] = like
        return marks[:, self.of_book]  # a book's -1 picks the last column


@dataclass(frozen=True)
class _Readers:
    """Readers of a real catalogue: the books' real popularity and quality; the readers' favourite authors and
    series, leaning per era and own language."""

    book_ids: np.ndarray  # the catalogue's ids, as text
    popularity: np.ndarray  # per book, a logit: POPULARITY_PER_LOG_COUNT x log(ratings_count)
    quality: np.ndarray  # per book, in stars: its real average rating (the catalogue's mean where it has none)
    user_bias: np.ndarray  # per reader, in stars
    authors: _Likes
    series: _Likes
    era_leaning: np.ndarray  # readers x (eras + 1) logits, the last column 0 (books without a year)
    era_of_book: np.ndarray  # per book, its era's code (-1: none)
    home_language: np.ndarray  # per reader, a language's code
    language_of_book: np.ndarray  # per book, its language's code (-1: none)
    english: int  # English's code (-1 if no book is in English)

    mean = STAR_SHIFT
    noise = READER_NOISE_SD

    @classmethod
    def draw(cls, rng: np.random.Generator, users: int, table: pd.DataFrame) -> "_Readers":
        """Draw `users` readers of the books of `table` (`datasets.read_book_table`'s columns)."""
        traits = book_traits.traits(table)
        count = _numbers(table, "ratings_count")
        if count is None:  # no counts: popularity falls with the file's order, as a latent catalogue's with the id
            rank = np.arange(1, len(table) + 1)
            popularity = np.log(rank**-POPULARITY_EXPONENT + POPULARITY_FLOOR / len(table))
            weight = np.exp(popularity)
        else:
            weight = _filled(np.where(count > 0, count, np.nan), np.nanmin, 1.0)
            popularity = POPULARITY_PER_LOG_COUNT * np.log(weight)
        average = _numbers(table, "average_rating")
        quality = _filled(average if average is not None else np.full(len(table), np.nan), np.nanmean, 4.0)
        author_of, author_weight, _ = _codes(traits["author"], weight)
        series_of, series_weight, _ = _codes(traits["series"], weight)
        era_of, eras, _ = _codes(traits["era"], weight)
        language_of, books_in, languages = _codes(traits["language"], np.ones(len(table)))
        leaning = np.hstack([ERA_SD * rng.standard_normal((users, len(eras))), np.zeros((users, 1))])
        user_bias = USER_BIAS_SD * rng.standard_normal(users)
        return cls(
            book_ids=table["book_id"].to_numpy(dtype=object),
            popularity=popularity.astype(np.float32),
            quality=quality.astype(np.float32),
            user_bias=user_bias.astype(np.float32),
            authors=_Likes.draw(rng, users, author_of, author_weight, 1, EXTRA_FAVOURITE_AUTHORS),
            series=_Likes.draw(rng, users, series_of, series_weight, 0, FAVOURITE_SERIES),
            era_leaning=leaning.astype(np.float32),
            era_of_book=era_of,
            home_language=rng.choice(len(books_in), size=users, p=books_in / books_in.sum())
            if len(books_in)
            else np.full(users, -1),
            language_of_book=language_of,
            english=languages.index(book_traits.ENGLISH) if book_traits.ENGLISH in languages else -1,
        )

    @property
    def users(self) -> int:
        return len(self.user_bias)

    @property
    def books(self) -> int:
        return len(self.book_ids)

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """users x books affinity logits: favourite authors and series, the era leaning, the language."""
        affinity = self.authors.affinity(users, AUTHOR_LIKE)
        affinity += self.series.affinity(users, SERIES_LIKE)
        affinity += self.era_leaning[users][:, self.era_of_book]
        own = self.home_language[users][:, None] == self.language_of_book[None, :]
        foreign = ((self.language_of_book >= 0) & (self.language_of_book != self.english))[None, :]
        affinity += np.where(own, LANGUAGE_LIKE, np.where(foreign, -LANGUAGE_LIKE, 0.0)).astype(np.float32)
        return affinity


def _codes(values: pd.Series, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Each book's code of its trait value (-1: none), each value's `weight` summed over its books, and the values
    in code order."""
    codes, uniques = pd.factorize(values)
    known = codes >= 0
    return (
        codes.astype(np.int64),
        np.bincount(codes[known], weights=weight[known], minlength=len(uniques)),
        list(uniques),
    )


def _filled(values: np.ndarray, fill: Callable[[np.ndarray], float], default: float) -> np.ndarray:
    """`values` with every NaN replaced by `fill` of the others (`default` when all are NaN)."""
    known = np.isfinite(values)
    return np.where(known, values, fill(values) if known.any() else default)


def _activity(rng: np.random.Generator, users: int, books: int, ratings: int) -> np.ndarray:
    """Ratings per user: lognormal shares of the total on top of a floor, capped at `books`, summing to `ratings`."""
    floor = min(3, books)
    floor = floor if ratings >= floor * users else 1
    counts = np.full(users, floor, dtype=np.int64)
    weights = rng.lognormal(0.0, ACTIVITY_SIGMA, users)
    remaining = ratings - floor * users
    while remaining:
        room = books - counts
        share = np.where(room > 0, weights, 0.0)
        # Rounding the running total (not each share) makes the parts add up to exactly `remaining`.
        total = np.rint(np.cumsum(share) * (remaining / share.sum()))
        total[-1] = remaining
        extra = np.minimum(np.diff(total, prepend=0).astype(np.int64), room)
        counts += extra
        remaining -= int(extra.sum())
    return counts


def _write_ratings(
    handle: TextIO, rng: np.random.Generator, world: _Tastes, counts: np.ndarray, progress: Progress | None
) -> np.ndarray:
    """Write the header and every user's ratings; return star counts per book (books x 5)."""
    handle.write("user_id,book_id,rating\n")
    stars = np.zeros(world.books * 5, dtype=np.int64)
    chunk = max(1, CHUNK_CELLS // world.books)
    for start in range(0, world.users, chunk):
        users, items, rating = _chunk(rng, world, start, counts[start : start + chunk])
        stars += np.bincount(items * 5 + (rating - 1), minlength=world.books * 5)
        frame = pd.DataFrame({"user_id": users + 1, "book_id": world.book_ids[items], "rating": rating})
        frame.to_csv(handle, header=False, index=False, lineterminator="\n")
        if progress is not None:
            progress(min(start + chunk, world.users), world.users)
    return stars.reshape(world.books, 5)


def _chunk(
    rng: np.random.Generator, world: _Tastes, start: int, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample and rate the books of users start..start+len(counts)-1; rows come in random order per user."""
    users = np.arange(start, start + len(counts))
    affinity = world.affinity(users)
    keys = _exponential_logs(rng, affinity.shape)
    keys -= world.popularity
    keys -= affinity
    # Gumbel-top-k: the k smallest of log(Exp(1)) - logit are a draw of k books without replacement.
    rows, items = _smallest(keys, counts)
    order = np.lexsort((rng.random(len(rows)), rows))
    rows, items = rows[order], items[order]
    score = (
        world.mean
        + world.user_bias[users[rows]]
        + world.quality[items]
        + AFFINITY_EFFECT * affinity[rows, items]
        + world.noise * rng.standard_normal(len(rows), dtype=np.float32)
    )
    rating = np.clip(np.rint(score), 1, 5).astype(np.int64)
    return users[rows], items.astype(np.int64), rating


def _exponential_logs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """log(Exp(1)) draws as float32, computed as log(-log(1 - uniform)): faster than numpy's exponential."""
    keys = rng.random(shape, dtype=np.float32)
    np.subtract(1.0, keys, out=keys)
    np.log(keys, out=keys)
    np.negative(keys, out=keys)
    with np.errstate(divide="ignore"):
        np.log(keys, out=keys)  # an Exp(1) draw of exactly 0 gives -inf: that book is certainly picked
    return keys


def _smallest(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each row's counts[row] smallest keys, sorted by row."""
    k = int(counts.max())
    if k < keys.shape[1]:
        threshold = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
        rows, cols = np.nonzero(keys <= threshold)
    else:
        rows, cols = np.nonzero(np.ones(keys.shape, dtype=bool))
    order = np.lexsort((keys[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
    keep = rank < counts[rows]
    return rows[keep], cols[keep]


def _book_table(
    rng: np.random.Generator, books: int, stars: np.ndarray, catalogue: pd.DataFrame | None
) -> pd.DataFrame:
    """The books.csv frame: metadata (real or generated) plus rating statistics from the synthetic ratings."""
    ids = np.arange(1, books + 1)
    title, authors, year, image = (
        _real_metadata(books, catalogue) if catalogue is not None else _generated_metadata(rng, books)
    )
    count = stars.sum(axis=1)
    mean = np.divide(stars @ np.arange(1, 6), count, out=np.zeros(books), where=count > 0)
    table = {
        "book_id": ids,
        "goodreads_book_id": ids,
        "best_book_id": ids,
        "work_id": ids,
        "books_count": 1,
        "isbn": "",
        "isbn13": "",
        "authors": authors,
        "original_publication_year": pd.array(year, dtype="Int64"),
        "original_title": title,
        "title": title,
        "language_code": "eng",
        "average_rating": np.round(mean, 2),
        "ratings_count": count,
        "work_ratings_count": count,
        "work_text_reviews_count": count // 20,
        **{f"ratings_{s}": stars[:, s - 1] for s in range(1, 6)},
        "image_url": [url or NO_PHOTO_URL for url in image],
        "small_image_url": [_small_cover(url) for url in image],
    }
    return pd.DataFrame(table, columns=list(BOOK_COLUMNS))


def _generated_metadata(rng: np.random.Generator, books: int) -> tuple[list, list, list, list]:
    ids = range(1, books + 1)
    author = rng.integers(1, books // 3 + 2, size=books)
    year = rng.integers(1950, 2018, size=books)
    return (
        [f"Synthetic Book {i}" for i in ids],
        [f"Author {a}" for a in author],
        year.tolist(),
        [None] * books,
    )


def _real_metadata(books: int, catalogue: pd.DataFrame) -> tuple[list, list, list, list]:
    rows = catalogue.iloc[np.arange(books) % len(catalogue)]
    copy = np.arange(books) // len(catalogue)
    title = [t if c == 0 else f"{t} (copy {c + 1})" for t, c in zip(rows["title"], copy)]
    return title, rows["authors"].tolist(), rows["year"].tolist(), rows["image_url"].tolist()


def _small_cover(url: str | None) -> str:
    """The small cover of a goodreads medium cover url (`/books/<n>m/` becomes `/books/<n>s/`)."""
    if not url or url == NO_PHOTO_URL:
        return NO_PHOTO_SMALL_URL
    return _MEDIUM_COVER.sub(r"\1s/", url)
