"""A synthetic goodbooks-shaped dataset with learnable structure, for demos and full-scale benchmarks.

Users and books get latent factors (tastes); book popularity follows a power law and user
activity a lognormal. Each user's books are drawn without replacement from
softmax(popularity + affinity) with the Gumbel-top-k trick, a chunk of users at a time so memory
stays bounded; each rating is mean + book quality + user bias + affinity + noise, rounded and
clipped to 1..5 stars. The same arguments and seed give byte-identical files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import pandas as pd

from bookrec.shared.errors import ValidationError
from bookrec.shared.files import atomic_text
from bookrec.worker.learn.datasets import read_books

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
    """Write goodbooks-format `ratings.csv` and `books.csv` into `out_dir`.

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
    return {
        "ratings_path": str(ratings_path),
        "books_path": str(books_path),
        "users": users,
        "books": books,
        "ratings": ratings,
        "seed": seed,
        "books_from": str(books_from) if books_from is not None else None,
        "min_ratings_per_user": int(counts.min()),
    }


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


@dataclass(frozen=True)
class _World:
    """The hidden truth the ratings are drawn from: tastes, popularity, quality and bias."""

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
    handle: TextIO, rng: np.random.Generator, world: _World, counts: np.ndarray, progress: Progress | None
) -> np.ndarray:
    """Write the header and every user's ratings; return star counts per book (books x 5)."""
    handle.write("user_id,book_id,rating\n")
    stars = np.zeros(world.books * 5, dtype=np.int64)
    chunk = max(1, CHUNK_CELLS // world.books)
    for start in range(0, world.users, chunk):
        users, items, rating = _chunk(rng, world, start, counts[start : start + chunk])
        stars += np.bincount(items * 5 + (rating - 1), minlength=world.books * 5)
        frame = pd.DataFrame({"user_id": users + 1, "book_id": items + 1, "rating": rating})
        frame.to_csv(handle, header=False, index=False, lineterminator="\n")
        if progress is not None:
            progress(min(start + chunk, world.users), world.users)
    return stars.reshape(world.books, 5)


def _chunk(
    rng: np.random.Generator, world: _World, start: int, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample and rate the books of users start..start+len(counts)-1; rows come in random order per user."""
    users = np.arange(start, start + len(counts))
    affinity = world.user_factors[users] @ world.book_factors.T
    keys = _exponential_logs(rng, affinity.shape)
    keys -= world.popularity
    keys -= affinity
    # Gumbel-top-k: the k smallest of log(Exp(1)) - logit are a draw of k books without replacement.
    rows, items = _smallest(keys, counts)
    order = np.lexsort((rng.random(len(rows)), rows))
    rows, items = rows[order], items[order]
    score = (
        MEAN_RATING
        + world.user_bias[users[rows]]
        + world.quality[items]
        + AFFINITY_EFFECT * affinity[rows, items]
        + NOISE_SD * rng.standard_normal(len(rows), dtype=np.float32)
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
