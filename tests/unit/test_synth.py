"""The synthetic dataset generators (`bookrec.worker.learn.synth`: the benchmarks' latent catalogue, and readers of
real books) and `bookrec data synth`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bookrec.cli import main
from bookrec.shared.errors import DataError, ValidationError
from bookrec.worker.learn.book_traits import traits
from bookrec.worker.learn.datasets import read_book_table, read_books, read_ratings
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS, PRESETS
from bookrec.worker.learn.synth import BOOK_COLUMNS, synthesise, synthesise_readers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def ratings_of(summary: dict) -> pd.DataFrame:
    return pd.read_csv(summary["ratings_path"])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The `small` preset, generated once for the tests that only read it."""
    return synthesise(tmp_path_factory.mktemp("small"), **PRESETS["small"], seed=0)


# --- shape -----------------------------------------------------------------------------------


def test_ratings_have_the_exact_shape_asked_for(tmp_path: Path) -> None:
    summary = synthesise(tmp_path, users=300, books=120, ratings=6000, seed=1)
    assert Path(summary["ratings_path"]).read_text().startswith("user_id,book_id,rating\n")
    ratings = ratings_of(summary)
    assert len(ratings) == 6000
    assert sorted(ratings["user_id"].unique()) == list(range(1, 301))
    assert ratings["book_id"].between(1, 120).all()
    assert set(ratings["rating"].unique()) <= {1, 2, 3, 4, 5}
    assert not ratings.duplicated(["user_id", "book_id"]).any()
    per_user = ratings["user_id"].value_counts()
    assert per_user.min() >= 3
    assert (summary["users"], summary["books"], summary["ratings"]) == (300, 120, 6000)
    assert summary["min_ratings_per_user"] == per_user.min()


def test_every_user_gets_at_least_one_rating_when_three_each_is_impossible(tmp_path: Path) -> None:
    ratings = ratings_of(synthesise(tmp_path, users=10, books=5, ratings=12, seed=0))
    assert len(ratings) == 12
    assert ratings["user_id"].nunique() == 10
    assert not ratings.duplicated(["user_id", "book_id"]).any()


def test_everyone_rates_everything_at_the_upper_bound(tmp_path: Path) -> None:
    ratings = ratings_of(synthesise(tmp_path, users=7, books=4, ratings=28, seed=0))
    assert len(ratings) == 28 and not ratings.duplicated(["user_id", "book_id"]).any()


def test_books_csv_has_goodbooks_columns_and_stats_that_match_the_ratings(small: dict) -> None:
    books = pd.read_csv(small["books_path"])
    assert tuple(books.columns) == BOOK_COLUMNS
    assert list(books["book_id"]) == list(range(1, 1001))
    counts = ratings_of(small)["book_id"].value_counts().reindex(books["book_id"], fill_value=0)
    assert (books["ratings_count"].to_numpy() == counts.to_numpy()).all()
    stars = books[[f"ratings_{s}" for s in range(1, 6)]].to_numpy()
    assert (stars.sum(axis=1) == books["ratings_count"]).all()
    assert books.loc[0, "title"] == "Synthetic Book 1" and books.loc[0, "authors"].startswith("Author ")


def test_output_reads_back_with_our_readers(small: dict) -> None:
    data = read_ratings(small["ratings_path"])
    assert len(data.frame) == 60_000 and data.duplicates_dropped == 0
    books = read_books(small["books_path"])
    assert len(books) == 1000 and set(data.frame["item"]) <= set(books.index)


def test_books_from_a_real_catalogue_take_its_metadata_and_cycle(tmp_path: Path) -> None:
    summary = synthesise(tmp_path, users=30, books=250, ratings=300, seed=0, books_from=FIXTURES / "books_sample.csv")
    books = read_books(summary["books_path"])
    sample = read_books(FIXTURES / "books_sample.csv")
    assert books.loc["1"].to_dict() == sample.loc["1"].to_dict()
    assert books.loc["201", "title"] == sample.loc["1", "title"] + " (copy 2)"
    assert books.loc["250", "authors"] == sample.loc["50", "authors"]
    raw = pd.read_csv(summary["books_path"])
    assert raw.loc[0, "small_image_url"] == "https://images.gr-assets.com/books/1447303603s/2767052.jpg"


# --- determinism and structure ---------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path, small: dict) -> None:
    again = synthesise(tmp_path / "again", **PRESETS["small"], seed=0)
    other = synthesise(tmp_path / "other", **PRESETS["small"], seed=1)
    for name in ("ratings_path", "books_path"):
        assert Path(again[name]).read_bytes() == Path(small[name]).read_bytes()
    assert Path(other["ratings_path"]).read_bytes() != Path(small["ratings_path"]).read_bytes()


def test_popularity_is_skewed(small: dict) -> None:
    counts = np.sort(ratings_of(small)["book_id"].value_counts().to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.35


def test_ratings_are_predictable_from_users_and_books(small: dict) -> None:
    """A user+book bias baseline fitted on 80% beats the global mean on the other 20%."""
    ratings = ratings_of(small)
    test = np.random.default_rng(0).random(len(ratings)) < 0.2
    train = ratings[~test]
    mean = train["rating"].mean()
    book_bias = (train["rating"] - mean).groupby(train["book_id"]).sum() / (train.groupby("book_id").size() + 5)
    residual = train["rating"] - mean - train["book_id"].map(book_bias)
    user_bias = residual.groupby(train["user_id"]).sum() / (train.groupby("user_id").size() + 5)
    held = ratings[test]
    predicted = mean + held["book_id"].map(book_bias).fillna(0) + held["user_id"].map(user_bias).fillna(0)
    rmse_baseline = np.sqrt(((held["rating"] - predicted) ** 2).mean())
    rmse_mean = np.sqrt(((held["rating"] - mean) ** 2).mean())
    assert rmse_baseline < 0.95 * rmse_mean


def test_users_choices_follow_their_tastes(small: dict) -> None:
    """Item-to-item co-occurrence finds a held-out book of each user clearly more often than popularity does."""
    ratings = ratings_of(small)
    held = ratings.groupby("user_id").sample(1, random_state=0).sort_values("user_id")
    train = ratings.drop(held.index)
    seen = np.zeros((2000, 1000), dtype=np.float32)
    seen[train["user_id"] - 1, train["book_id"] - 1] = 1
    norms = np.sqrt(seen.sum(axis=0)) + 1e-9
    similarity = seen.T @ seen / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0)
    target = held["book_id"].to_numpy() - 1

    def hit_rate(scores: np.ndarray) -> float:
        scores = np.where(seen > 0, -np.inf, scores)
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        return float((top == target[:, None]).any(axis=1).mean())

    popularity = hit_rate(np.broadcast_to(seen.sum(axis=0), seen.shape))
    assert hit_rate(seen @ similarity) > 1.3 * popularity


def test_star_distribution_looks_like_goodbooks(small: dict) -> None:
    share = ratings_of(small)["rating"].value_counts(normalize=True)
    assert share[4] > share[3] > share[2] > share[1]
    assert 3.6 < (share * share.index).sum() < 4.1


# --- progress, atomic writes, validation ------------------------------------------------------


def test_progress_reports_users_done_up_to_the_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    synthesise(tmp_path, users=9000, books=1000, ratings=30000, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 1
    assert calls[-1] == (9000, 9000)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_crash_leaves_the_previous_file_and_no_partial_one(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("old\n")

    def crash(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesise(tmp_path, users=50, books=20, ratings=300, seed=0, progress=crash)
    assert (tmp_path / "ratings.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(users=0, books=5, ratings=5), "users and books must each be at least 1"),
        (dict(users=5, books=0, ratings=5), "users and books must each be at least 1"),
        (dict(users=5, books=5, ratings=4), r"between users \(5: one each\) and users x books \(25"),
        (dict(users=5, books=5, ratings=26), "got 26"),
        (dict(users=5, books=5, ratings=10, seed=-1), "seed must be 0 or more"),
        (dict(users=2.5, books=5, ratings=10), "users must be a whole number"),
        (dict(users=True, books=5, ratings=10), "users must be a whole number"),
    ],
)
def test_bad_arguments_are_explained(tmp_path: Path, args: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        synthesise(tmp_path, **{"seed": 0, **args})
    assert list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(ValidationError, match="exists and is not a directory"):
        synthesise(tmp_path / "out", users=5, books=5, ratings=10, seed=0)


def test_missing_books_from_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        synthesise(tmp_path, users=5, books=5, ratings=10, seed=0, books_from=tmp_path / "books.csv")


@pytest.mark.slow
def test_full_goodbooks_preset(tmp_path: Path) -> None:
    summary = synthesise(tmp_path, **PRESETS["goodbooks"], seed=0)
    data = read_ratings(summary["ratings_path"])
    assert len(data.frame) == 981_756 and data.duplicates_dropped == 0
    assert data.frame["user"].nunique() == 53_424
    counts = np.sort(data.frame["item"].value_counts().to_numpy())[::-1]
    assert counts[:1000].sum() / counts.sum() > 0.35


# --- bookrec data synth ----------------------------------------------------------------------


def test_cli_synth_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = ["--users", "50", "--books", "20", "--ratings", "300", "--seed", "4"]
    code = main(["data", "synth", "--out", str(tmp_path), *sizes, "--json"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["users"], summary["books"], summary["ratings"], summary["seed"]) == (50, 20, 300, 4)
    assert len(pd.read_csv(summary["ratings_path"])) == 300
    assert captured.err == ""


def test_cli_synth_defaults_to_the_small_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "wrote 60,000 ratings by 2,000 users of 1,000 books (seed 0)" in out
    assert str(tmp_path / "ratings.csv") in out


def test_cli_numbers_override_the_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path), "--preset", "small", "--users", "100", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["users"], summary["books"], summary["ratings"]) == (100, 1000, 60000)


def test_cli_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["data", "synth", "--out", str(tmp_path), "--users", "50", "--books", "20", "--ratings", "300"]) == 0
    err = capsys.readouterr().err
    assert "synthesising" in err and "50/50" in err


def test_cli_impossible_sizes_are_one_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "synth", "--out", str(tmp_path), "--users", "10", "--books", "2", "--ratings", "50"])
    assert code == ValidationError.exit_code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("bookrec: error: ratings must be between users")


def test_cli_rejects_a_non_positive_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--out", str(tmp_path), "--users", "0"])
    assert exit_.value.code == 2
    assert "--users: must be at least 1, got 0" in capsys.readouterr().err


# --- readers of real books --------------------------------------------------------------------


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The `small` preset over the shipped goodbooks catalogue (its 1,000 most-rated books), generated once."""
    return synthesise_readers(tmp_path_factory.mktemp("readers"), **PRESETS["small"], seed=0)


def catalogue() -> pd.DataFrame:
    """The shipped goodbooks books as text, with each book's traits."""
    table = read_book_table(GOODBOOKS_BOOKS)
    return table.join(traits(table))


def pooled_lift(ratings: pd.DataFrame, books: pd.DataFrame, pairs: np.ndarray) -> float:
    """How much more often the book pairs marked in `pairs` (books x books, `books`' order) are rated by one reader
    than if readers chose each book independently with its popularity: observed co-ratings / expected, pooled."""
    column = {book: i for i, book in enumerate(books["book_id"])}
    kept = ratings[ratings["book_id"].astype(str).isin(column)]
    seen = np.zeros((ratings["user_id"].max(), len(books)), np.float32)
    seen[kept["user_id"] - 1, kept["book_id"].astype(str).map(column)] = 1
    together = seen.T @ seen
    share = seen.mean(axis=0)
    expected = len(seen) * np.outer(share, share)
    pairs = pairs & ~np.eye(len(books), dtype=bool)
    return float(together[pairs].sum() / expected[pairs].sum())


def same(values: pd.Series) -> np.ndarray:
    known = values.notna().to_numpy()
    v = values.to_numpy()
    return (v[:, None] == v[None, :]) & known[:, None] & known[None, :]


def test_readers_rate_the_most_rated_real_books_under_their_real_ids(tmp_path: Path) -> None:
    summary = synthesise_readers(tmp_path, users=300, ratings=6000, seed=1, books=120)

    ratings = pd.read_csv(summary["ratings_path"], dtype={"book_id": str})
    real = read_book_table(GOODBOOKS_BOOKS)
    top = real.assign(count=real["ratings_count"].astype(int)).nlargest(120, "count", keep="first")
    assert len(ratings) == 6000 and not ratings.duplicated(["user_id", "book_id"]).any()
    assert sorted(ratings["user_id"].unique()) == list(range(1, 301)) and ratings["rating"].between(1, 5).all()
    assert set(ratings["book_id"]) <= set(top["book_id"])
    written = read_book_table(summary["books_path"])
    assert written.equals(real[real["book_id"].isin(top["book_id"])].reset_index(drop=True))
    assert summary["generator"] == "readers of real books" and summary["books_from"] == str(GOODBOOKS_BOOKS)


def test_readers_follow_the_books_real_popularity(readers: dict) -> None:
    counts = ratings_of(readers)["book_id"].value_counts()
    real = pd.read_csv(readers["books_path"]).set_index("book_id")["ratings_count"]
    assert np.corrcoef(np.log(real.reindex(counts.index)), np.log(counts))[0, 1] > 0.6
    assert counts.nlargest(len(real) // 10).sum() / counts.sum() > 0.25


def test_a_reader_who_rated_an_author_or_a_series_rates_more_of_it(readers: dict, tmp_path: Path) -> None:
    """Pairs of books by one author, of one series or of one era are rated together far more often than other pairs
    (readers' activity alone lifts every pair above 1, so each is compared with the other pairs'); the latent
    catalogue, whose books merely borrow the same titles, shows no such thing."""
    books = catalogue()
    latent = synthesise(tmp_path, **PRESETS["small"], seed=0, books_from=GOODBOOKS_BOOKS)  # book i: the file's i-th
    for summary, factors in ((readers, {"author": 1.6, "series": 1.4, "era": 1.3}), (latent, None)):
        ratings = ratings_of(summary)
        rated = books[books["book_id"].isin(ratings["book_id"].astype(str))].reset_index(drop=True)
        for trait in ("author", "series", "era"):
            alike = same(rated[trait])
            ratio = pooled_lift(ratings, rated, alike) / pooled_lift(ratings, rated, ~alike)
            assert ratio > factors[trait] if factors else ratio < 1.2, (summary["generator"], trait, ratio)


def test_readers_of_a_book_in_another_language_than_english_read_more_in_it(tmp_path: Path) -> None:
    summary = synthesise_readers(tmp_path, users=3000, ratings=90_000, seed=0)
    ratings = ratings_of(summary)
    books = catalogue()
    foreign = books["language"].notna() & (books["language"] != "eng")
    books = books[foreign | books.index.isin(range(300))].reset_index(drop=True)  # and the 300 first English ones
    foreign = (books["language"] != "eng").to_numpy()
    alike = same(books["language"]) & foreign[:, None]
    mixed = foreign[:, None] & ~foreign[None, :]
    assert foreign.sum() > 100
    assert pooled_lift(ratings, books, alike) > 5 * pooled_lift(ratings, books, mixed)


def test_readers_stars_look_like_goodbooks_and_follow_the_real_average(readers: dict) -> None:
    ratings = ratings_of(readers)
    share = ratings["rating"].value_counts(normalize=True)
    assert share[4] > share[3] > share[2] > share[1]
    assert 3.6 < ratings["rating"].mean() < 4.1
    stars = ratings.groupby("book_id")["rating"].agg(["mean", "size"])
    stars = stars[stars["size"] >= 30]
    real = pd.read_csv(readers["books_path"]).set_index("book_id")["average_rating"].reindex(stars.index)
    assert np.corrcoef(real, stars["mean"])[0, 1] > 0.3


def test_readers_are_repeatable_by_seed(tmp_path: Path, readers: dict) -> None:
    again = synthesise_readers(tmp_path / "again", **PRESETS["small"], seed=0)
    other = synthesise_readers(tmp_path / "other", **PRESETS["small"], seed=1)

    for name in ("ratings_path", "books_path"):
        assert Path(again[name]).read_bytes() == Path(readers[name]).read_bytes()
    assert Path(other["ratings_path"]).read_bytes() != Path(readers["ratings_path"]).read_bytes()


def test_readers_rate_any_books_file_even_one_with_only_ids_and_titles(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n" + "".join(f'm{i},"Item {i} (A Saga, #{i})"\n' for i in range(1, 41)))

    summary = synthesise_readers(tmp_path / "out", users=50, ratings=400, seed=0, catalogue=items)

    assert set(ratings_of(summary)["book_id"]) <= {f"m{i}" for i in range(1, 41)}
    assert read_books(summary["books_path"]).loc["m7", "title"] == "Item 7 (A Saga, #7)"


def test_readers_cannot_rate_more_books_than_the_catalogue_holds(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="holds 10,000 books; readers can rate at most that many, not 10,001"):
        synthesise_readers(tmp_path / "out", users=5, ratings=10, seed=0, books=10_001)
    with pytest.raises(DataError, match="no such file"):
        synthesise_readers(tmp_path / "out", users=5, ratings=10, seed=0, catalogue=tmp_path / "books.csv")
    assert not (tmp_path / "out").exists()


def test_cli_synth_rates_the_shipped_real_books_and_latent_keeps_the_benchmarks_catalogue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = ["--users", "40", "--books", "30", "--ratings", "200"]
    assert main(["data", "synth", "--out", str(tmp_path / "real"), *sizes, "--json"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert main(["data", "synth", "--out", str(tmp_path / "latent"), *sizes, "--latent", "--json"]) == 0
    latent = json.loads(capsys.readouterr().out)

    assert real["generator"] == "readers of real books" and latent["generator"] == "latent"
    assert read_books(real["books_path"]).loc["1", "title"] == "The Hunger Games (The Hunger Games, #1)"
    assert read_books(latent["books_path"]).loc["1", "title"] == "Synthetic Book 1"
    expected = synthesise(tmp_path / "direct", users=40, books=30, ratings=200, seed=0)
    assert Path(latent["ratings_path"]).read_bytes() == Path(expected["ratings_path"]).read_bytes()
