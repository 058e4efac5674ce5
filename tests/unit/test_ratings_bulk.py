"""Bulk in and out of the ratings store on SQLite: `import_ratings` merges a file as streamed events would (latest
ts wins, the last of a file's duplicate pairs wins), `import_books` loads a catalogue, `export_csv` writes a snapshot
that reads back as the same ratings, and `bookrec data import|import-books|export` report bad input in one line.
tests/integration/test_ratings_bulk_postgres.py runs the store tests again on PostgreSQL (the COPY path)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bookrec import cli
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import DataError, ValidationError
from bookrec.shared.ratings import RatingEvent
from bookrec.worker.learn.datasets import read_book_rows, read_ratings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FUTURE = 4_000_000_000.0  # epoch seconds in 2096: later than any import's own time


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def live(store: RatingsStore) -> dict[tuple[str, str], float]:
    return {(user, book): rating for user, book, rating in store.snapshot().rows}


def file_ratings(path: Path) -> dict[tuple[str, str], float]:
    """What `train` reads from `path`: each pair's last rating."""
    frame = read_ratings(path).frame
    return {(u, i): float(r) for u, i, r in frame.itertuples(index=False, name=None)}


RATINGS = [["7", "12", 4], ["7", "13", 2.5], ["8", "12", 1], ["alice", "b-9", 5], ["7", "12", 3]]  # (7, 12) twice


def test_an_imported_file_snapshots_as_train_reads_it_the_last_duplicate_winning(
    store: RatingsStore, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    result = store.import_ratings(read_ratings(path).frame)
    assert live(store) == file_ratings(path)
    assert live(store)[("7", "12")] == 3.0, "the file's last rating of the pair"
    assert (result.rows, result.users, result.items) == (4, 3, 3)


def test_duplicate_rows_given_directly_keep_the_latest_ts_then_the_last_row(store: RatingsStore) -> None:
    rows = [("u", "b", 1.0), ("u", "b", 2.0), ("v", "b", 5.0, 20.0), ("v", "b", 4.0, 10.0), ("v", "b", 3.0, 20.0)]
    store.import_ratings(iter(rows))
    assert live(store) == {("u", "b"): 2.0, ("v", "b"): 3.0}


def test_an_import_merges_with_the_store_as_events_do_the_latest_ts_winning(store: RatingsStore) -> None:
    store.apply([RatingEvent("old", "b", 1.0, 10.0), RatingEvent("new", "b", 1.0, FUTURE)])
    store.apply([RatingEvent("gone", "b", 1.0, 10.0), RatingEvent("gone", "b", None, FUTURE, op="delete")])
    store.import_ratings([("old", "b", 4.0), ("new", "b", 4.0), ("gone", "b", 4.0), ("u", "b", 2.0, 5.0)])
    assert live(store) == {("old", "b"): 4.0, ("new", "b"): 1.0, ("u", "b"): 2.0}, "import time is between the two"
    store.import_ratings([("u", "b", 5.0, 1.0)])
    assert live(store)[("u", "b")] == 2.0, "an older ts does not overwrite"


@pytest.mark.parametrize(
    "bad, problem",
    [
        (("u", "b"), "('u', 'b') is not (user_id, book_id, rating[, ts])"),
        (("u" * 129, "b", 1.0), "user_id 'uuu"),
        (("u", "", 1.0), "book_id ''"),
        (("u", "b", float("nan")), "rating nan is not a finite number"),
        (("u", "b", "four"), "rating 'four' is not a finite number"),
        (("u", "b", 4.0, float("inf")), "ts inf is not a finite number"),
    ],
)
def test_a_bad_row_refuses_the_whole_import(store: RatingsStore, bad: tuple, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        store.import_ratings([("u", "a", 4.0), bad, ("u", "c", 4.0)])
    assert str(caught.value).startswith(f"import row 2: {problem}")
    assert live(store) == {}


def test_progress_reaches_the_total(store: RatingsStore) -> None:
    seen: list[tuple[int, int | None]] = []
    store.import_ratings([(f"u{n}", "b", 3.0) for n in range(25_001)], progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (25_001, 25_001)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_books_import_from_a_goodbooks_csv(store: RatingsStore) -> None:
    rows = read_book_rows(FIXTURES / "books_sample.csv")
    assert store.import_books(rows) == len(rows) == 200
    with open(FIXTURES / "books_sample.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    book = store.books()[first["book_id"]]
    assert book["title"] == first["title"]
    assert book["goodreads_book_id"] == int(first["goodreads_book_id"])
    assert book["original_publication_year"] == int(float(first["original_publication_year"]))


def test_the_older_goodbooks_release_keys_books_by_id(tmp_path: Path, store: RatingsStore) -> None:
    path = write_csv(tmp_path / "books.csv", ["id", "book_id", "authors", "title"], [[1, 2767052, "S. C.", "T"]])
    store.import_books(read_book_rows(path))
    assert store.books()["1"]["goodreads_book_id"] == 2767052


def test_import_books_takes_a_movies_file_and_named_columns(
    tmp_path: Path, store: RatingsStore, capsys: pytest.CaptureFixture[str]
) -> None:
    movies = write_csv(tmp_path / "movies.csv", ["movieId", "title", "genres"], [[3, "Quiet Harbour (1994)", "Drama"]])
    items = write_csv(tmp_path / "items.csv", ["sku", "name", "year"], [["x1", "The Name", 1999]])
    url = f"sqlite:///{tmp_path / 'ratings.db'}"

    assert run(["data", "import-books", str(movies), "--database", url], capsys)[0] == 0
    code, out, _ = run(
        ["data", "import-books", str(items), "--item-col", "sku", "--title-col", "name", "--json", "--database", url],
        capsys,
    )

    assert code == 0 and json.loads(out)["rows"] == 1
    books = store.books()
    assert (books["3"]["title"], books["3"]["authors"]) == ("Quiet Harbour (1994)", None)
    assert (books["x1"]["title"], books["x1"]["original_publication_year"]) == ("The Name", 1999)
    code, _, err = run(["data", "import-books", str(items), "--title-col", "label", "--database", url], capsys)
    assert (
        code == 2
        and err.strip()
        == f"bookrec: error: {items}: no column 'label' (given by --title-col); columns found: sku, name, year"
    )


def test_an_export_reads_back_as_the_same_ratings(store: RatingsStore, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    store.import_ratings(read_ratings(source).frame)
    store.apply([RatingEvent("8", "12", None, FUTURE, op="delete")])
    out = tmp_path / "export.csv"
    out.write_text("old contents\n")
    result = store.export_csv(out)
    assert out.read_text().splitlines()[0] == "user_id,book_id,rating"
    assert file_ratings(out) == live(store) == {k: v for k, v in file_ratings(source).items() if k != ("8", "12")}
    assert (result.rows, result.users, result.items) == (3, 2, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temporary file left"
    other = RatingsStore(f"sqlite:///{tmp_path / 'copy.db'}")
    other.upgrade()
    other.import_ratings(read_ratings(out).frame)
    assert live(other) == live(store)
    other.close()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_imports_exports_and_summarises_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'fresh' / 'cli.db'}"  # not migrated yet: import does it
    source = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    code, out, _ = run(["data", "import", str(source), "--database", db, "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert {k: summary[k] for k in ("rows", "users", "items")} == {"rows": 4, "users": 3, "items": 3}
    assert summary["seconds"] >= 0 and summary["database"] == db
    code, out, _ = run(["data", "import-books", str(FIXTURES / "books_sample.csv"), "--database", db, "--json"], capsys)
    assert (code, json.loads(out)["rows"]) == (0, 200)
    code, out, _ = run(["data", "export", str(tmp_path / "out.csv"), "--database", db], capsys)
    assert code == 0 and out.startswith("exported 4 ratings by 3 users of 3 books")
    assert file_ratings(tmp_path / "out.csv") == file_ratings(source)


def test_the_cli_uses_bookrec_database_url_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOOKREC_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    source = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    assert run(["data", "import", str(source)], capsys)[0] == 0
    assert RatingsStore(f"sqlite:///{tmp_path / 'env.db'}").snapshot().summary["rows"] == 4


def error_of(read: object, path: Path) -> str:
    """The DataError message `train`'s reader gives for `path`."""
    with pytest.raises(DataError) as caught:
        read(path)  # type: ignore[operator]
    return str(caught.value)


@pytest.mark.parametrize(
    "name, text",
    [
        ("missing.csv", None),
        ("nan.csv", "user_id,book_id,rating\n1,2,\n"),
        ("nocol.csv", "user_id,book_id,stars\n1,2,3\n"),
        ("empty.csv", ""),
    ],
)
def test_a_bad_ratings_file_is_trains_error_in_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    db = tmp_path / "never.db"
    code, _, err = run(["data", "import", str(path), "--database", f"sqlite:///{db}"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"bookrec: error: {error_of(read_ratings, path)}"]
    assert not db.exists(), "nothing is touched before the file reads"


def test_a_bad_books_file_is_trains_error_in_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "books.csv", ["book_id", "name"], [[1, "T"]])
    code, _, err = run(["data", "import-books", str(path), "--database", f"sqlite:///{tmp_path / 'b.db'}"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"bookrec: error: {error_of(read_book_rows, path)}"]
    assert "missing column(s) title" in err


def test_a_bad_or_unreachable_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    code, _, err = run(["data", "import", str(source), "--database", "mysql://x/y"], capsys)
    assert (code, len(err.strip().splitlines())) == (2, 1)
    assert "not supported" in err
    code, _, err = run(
        ["data", "export", str(tmp_path / "o.csv"), "--database", f"sqlite:///{tmp_path / 'e.db'}"], capsys
    )
    assert (code, len(err.strip().splitlines())) == (11, 1), "a store never migrated has no ratings table"
    assert "no such table" in err and not (tmp_path / "o.csv").exists()
