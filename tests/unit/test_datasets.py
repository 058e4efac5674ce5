"""Reading ratings and books files (`bookrec.worker.learn.datasets`) and `bookrec data inspect`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bookrec.cli import main
from bookrec.shared.errors import DataError
from bookrec.worker.learn.datasets import (
    fingerprint,
    ratings_from_frame,
    read_book_rows,
    read_books,
    read_ratings,
    rows_sha256,
)
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS, ReadOptions, add_read_options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MOVIELENS = SHARED_DATA / "movielens" / "ml-latest-small" / "ratings.csv"
MOVIELENS_MOVIES = MOVIELENS.with_name("movies.csv")
MOVIES = (
    "movieId,title,genres\n"
    "3,Quiet Harbour (1994),Drama\n"
    '17,"Night Train, The (2001)",Thriller|Mystery\n'
    "1204,Paper Moons (1988),Comedy\n"
)
"""A movies file shaped like MovieLens' movies.csv (written here; no MovieLens row is copied)."""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(frame: pd.DataFrame) -> list[tuple[str, str, float]]:
    return [(u, i, float(r)) for u, i, r in zip(frame["user"], frame["item"], frame["rating"])]


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["book_id,user_id,rating\n258,1,5\n4081,2,4\n", "user_id,book_id,rating\n1,258,5\n2,4081,4\n"],
    ids=["older-release-order", "newer-release-order"],
)
def test_goodbooks_ratings_read_in_either_header_order(tmp_path: Path, text: str) -> None:
    data = read_ratings(write(tmp_path / "ratings.csv", text))
    assert rows(data.frame) == [("1", "258", 5.0), ("2", "4081", 4.0)]
    assert data.columns == {"user": "user_id", "item": "book_id", "rating": "rating"}
    assert list(data.frame.columns) == ["user", "item", "rating"]
    assert data.frame["rating"].dtype == np.float32
    assert all(isinstance(v, str) for v in data.frame["user"]) and all(isinstance(v, str) for v in data.frame["item"])
    assert data.duplicates_dropped == 0


def test_movielens_style_half_stars_gappy_ids_and_extra_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,193609,0.5,964982703\n7,31,4.5,964982224\n610,2,3.0,964983815\n",
    )
    data = read_ratings(path)
    assert rows(data.frame) == [("1", "193609", 0.5), ("7", "31", 4.5), ("610", "2", 3.0)]
    assert data.columns == {"user": "userId", "item": "movieId", "rating": "rating"}


def test_string_ids_stay_as_written_and_float_ids_lose_the_point_zero(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item,rating\nalice,B00X-1,4\n42.0,0007,3\nv1.0,17.00,2\n")
    assert rows(read_ratings(path).frame) == [("alice", "B00X-1", 4.0), ("42", "0007", 3.0), ("v1.0", "17", 2.0)]


def test_headerless_tsv_like_movielens_100k_with_names(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    data = read_ratings(path, ReadOptions(sep="\\t", names=("user", "item", "rating", "timestamp")))
    assert rows(data.frame) == [("196", "242", 3.0), ("186", "302", 3.0), ("22", "377", 1.0)]


def test_tsv_extension_means_tab_separated(tmp_path: Path) -> None:
    data = read_ratings(write(tmp_path / "ratings.tsv", "user_id\tbook_id\trating\n3\t9\t2\n"))
    assert rows(data.frame) == [("3", "9", 2.0)]


def test_sep_option_reads_other_separators(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.txt", "user;item;rating\n3;9;2.5\n")
    assert rows(read_ratings(path, ReadOptions(sep=";")).frame) == [("3", "9", 2.5)]
    tabbed = write(tmp_path / "ratings.csv", "user\titem\trating\n3\t9\t2.5\n")
    assert rows(read_ratings(tabbed, ReadOptions(sep="\\t")).frame) == [("3", "9", 2.5)]


def test_column_overrides_pick_unrecognised_names(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "reader,isbn,stars,item\nr1,0439,5,ignored\n")
    data = read_ratings(path, ReadOptions(user_col="reader", item_col="isbn", rating_col="stars"))
    assert rows(data.frame) == [("r1", "0439", 5.0)]
    assert data.columns == {"user": "reader", "item": "isbn", "rating": "stars"}


def test_recognised_names_match_ignoring_case(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "UserID,Book_Id,Rating\n1,2,3\n")
    assert rows(read_ratings(path).frame) == [("1", "2", 3.0)]


def test_utf8_file_with_a_byte_order_mark_from_excel(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes("user_id,book_id,rating\n1,2,3\n".encode("utf-8-sig"))
    assert rows(read_ratings(path).frame) == [("1", "2", 3.0)]


def test_duplicate_pairs_keep_the_last_rating_and_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,5,1\n2,5,4\n1,5,2\n1,6,3\n1,5,5\n")
    with caplog.at_level(logging.WARNING, logger="bookrec.worker.learn.datasets"):
        data = read_ratings(path)
    assert rows(data.frame) == [("2", "5", 4.0), ("1", "6", 3.0), ("1", "5", 5.0)]
    assert data.duplicates_dropped == 2
    assert "2 duplicate" in caplog.text


def test_keep_time_keeps_the_timestamp_of_each_kept_row_as_float64(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.csv", "userId,movieId,rating,Timestamp\n1,5,1,964982703\n2,5,4,964982224\n1,5,2,1537799250\n"
    )
    frame = read_ratings(path, keep_time=True).frame
    assert rows(frame) == [("2", "5", 4.0), ("1", "5", 2.0)]
    assert frame["timestamp"].dtype == np.float64
    assert frame["timestamp"].tolist() == [964982224.0, 1537799250.0]
    assert "timestamp" not in read_ratings(path).frame.columns


def test_keep_time_without_a_timestamp_column_reads_as_usual(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,5,3\n")
    assert list(read_ratings(path, keep_time=True).frame.columns) == ["user", "item", "rating"]


def test_keep_time_rejects_a_non_numeric_time_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating,timestamp\n1,5,3,964982703\n1,6,3,yesterday\n")
    with pytest.raises(
        DataError, match=r"1 row has a missing or non-numeric time in column 'timestamp' \(first at line 3"
    ):
        read_ratings(path, keep_time=True)


def test_read_options_from_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    add_read_options(parser)
    flags = ["--user-col", "u", "--item-col", "i", "--rating-col", "r", "--sep", "\\t", "--names", "u, i,r"]
    expected = ReadOptions(user_col="u", item_col="i", rating_col="r", sep="\\t", names=("u", "i", "r"))
    assert ReadOptions.from_args(parser.parse_args(flags)) == expected
    assert ReadOptions.from_args(parser.parse_args([])) == ReadOptions()


@pytest.mark.skipif(not MOVIELENS.is_file(), reason="MovieLens latest-small is not in ../shared/data")
def test_real_movielens_latest_small() -> None:
    data = read_ratings(MOVIELENS)
    assert len(data.frame) == 100_836
    assert data.frame["user"].nunique() == 610
    assert data.frame["item"].nunique() == 9_724
    assert data.frame["rating"].min() == 0.5 and data.frame["rating"].max() == 5.0
    assert data.duplicates_dropped == 0


# --- ratings errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_ratings(tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_ratings(tmp_path)


def test_missing_column_lists_the_columns_found_and_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,score\n1,2,3\n")
    with pytest.raises(DataError) as err:
        read_ratings(path)
    message = str(err.value)
    assert "r.csv" in message and "no rating column" in message
    assert "user_id, book_id, score" in message and "--rating-col" in message


def test_override_naming_an_absent_column(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,3\n")
    expected = r"no column 'stars' \(given by --rating-col\); columns found: user_id, book_id, rating"
    with pytest.raises(DataError, match=expected):
        read_ratings(path, ReadOptions(rating_col="stars"))


def test_two_candidate_columns_for_one_role_must_be_chosen(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,item_id,book_id,rating\n1,2,3,4\n")
    with pytest.raises(DataError, match="item_id, book_id could each be the item column; choose one with --item-col"):
        read_ratings(path)
    assert rows(read_ratings(path, ReadOptions(item_col="book_id")).frame) == [("1", "3", 4.0)]


def test_one_column_cannot_play_two_roles(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,3\n")
    with pytest.raises(DataError, match="one column is used for two roles .*user=rating"):
        read_ratings(path, ReadOptions(user_col="rating"))


def test_non_numeric_ratings_are_counted_with_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,3\n1,3,five\n2,2,4\n2,3,n/a\n")
    with pytest.raises(DataError, match=r"2 rows have a missing or non-numeric rating .*first at line 3: 'five'"):
        read_ratings(path)


def test_empty_rating_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,3\n1,3,\n")
    with pytest.raises(DataError, match=r"1 row has a missing or non-numeric rating .*first at line 3: empty"):
        read_ratings(path)


def test_infinite_rating_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,inf\n")
    with pytest.raises(DataError, match="first at line 2"):
        read_ratings(path)


def test_empty_id_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,rating\n1,2,3\n,3,4\n")
    with pytest.raises(DataError, match=r"1 row has an empty id in column 'user_id' \(first at line 3"):
        read_ratings(path)


def test_line_numbers_count_from_one_in_a_headerless_file(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "1\t2\tx\n")
    with pytest.raises(DataError, match="first at line 1: 'x'"):
        read_ratings(path, ReadOptions(sep="\t", names=("user", "item", "rating")))


@pytest.mark.parametrize("text", ["", "user_id,book_id,rating\n"], ids=["zero-bytes", "header-only"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match="empty|no rows"):
        read_ratings(write(tmp_path / "r.csv", text))


def test_file_that_is_not_utf8_names_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes("user_id,book_id,rating\n1,2,3\n1,caf\u00e9,4\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 34, line 3\); save it as UTF-8"):
        read_ratings(path)


def test_headerless_file_without_names_says_to_use_names(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n")
    with pytest.raises(DataError, match=r"no user, item or rating column among 196, 242, 3, 881250949.*--names"):
        read_ratings(path, ReadOptions(sep="\t"))


def test_names_must_match_the_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n")
    with pytest.raises(DataError, match="--names gives 3 names .* but the first row has 4 fields"):
        read_ratings(path, ReadOptions(sep="\t", names=("user", "item", "rating")))


def test_wrong_separator_is_caught(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id;book_id;rating\n1;2;3\n")
    with pytest.raises(DataError, match="no user, item or rating column among user_id;book_id;rating"):
        read_ratings(path)


# --- books -----------------------------------------------------------------------------------


def test_books_sample_fixture_reads_with_book_id_key() -> None:
    books = read_books(FIXTURES / "books_sample.csv")
    assert len(books) == 200 and books.index.name == "book_id"
    first = books.loc["1"]
    assert first["title"] == "The Hunger Games (The Hunger Games, #1)"
    assert first["authors"] == "Suzanne Collins"
    assert first["year"] == 2008 and isinstance(first["year"], int)
    assert first["image_url"] == "https://images.gr-assets.com/books/1447303603m/2767052.jpg"


def test_older_release_books_use_id_as_key(tmp_path: Path) -> None:
    # In the older release `book_id` is the goodreads id and `id` is the key the ratings use.
    path = write(
        tmp_path / "books.csv",
        "id,book_id,authors,original_publication_year,original_title,title,image_url\n"
        '1,2767052,Suzanne Collins,2008.0,The Hunger Games,"The Hunger Games (The Hunger Games, #1)",http://x/1.jpg\n'
        "2,3,Homer,-750.0,,,\n",
    )
    books = read_books(path)
    assert list(books.index) == ["1", "2"]
    assert books.loc["2"].to_dict() == {"title": "", "authors": "Homer", "year": -750, "image_url": None}


def test_books_title_falls_back_to_original_title_and_missing_year_is_none(tmp_path: Path) -> None:
    path = write(
        tmp_path / "books.csv",
        "book_id,authors,original_publication_year,original_title,title\n7,A,,Old Name,\n8,B,1999,Other,New Name\n",
    )
    books = read_books(path)
    assert books.loc["7", "title"] == "Old Name" and books.loc["7", "year"] is None
    assert books.loc["8", "title"] == "New Name" and books.loc["8", "year"] == 1999
    assert books.loc["7", "image_url"] is None


def test_books_missing_columns_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path / "books.csv", "book_id,name\n1,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) title \(.*--title-col.*\); columns found: book_id, name"):
        read_books(path)


def test_books_without_key_column(tmp_path: Path) -> None:
    path = write(tmp_path / "books.csv", "goodreads_book_id,title,authors\n1,x,y\n")
    with pytest.raises(DataError, match=r"missing column\(s\) book_id \(.*--item-col"):
        read_books(path)


def test_a_movies_file_reads_by_column_name_with_titles_and_no_authors(tmp_path: Path) -> None:
    books = read_books(write(tmp_path / "movies.csv", MOVIES))

    assert list(books.index) == ["3", "17", "1204"]
    assert books.loc["17"].to_dict() == {
        "title": "Night Train, The (2001)",
        "authors": None,
        "year": None,
        "image_url": None,
    }


def test_books_take_optional_author_and_year_columns_by_their_other_names(tmp_path: Path) -> None:
    books = read_books(write(tmp_path / "items.tsv", "item_id\tTitle\tAuthor\tYear\nb7\tA Title\tSomeone\t1999\n"))

    assert books.loc["b7"].to_dict() == {"title": "A Title", "authors": "Someone", "year": 1999, "image_url": None}


def test_item_and_title_columns_can_be_named(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "sku,name,title\nx1,The Name,a subtitle\n")

    books = read_books(path, ReadOptions(item_col="sku", title_col="name"))
    rows = read_book_rows(path, ReadOptions(item_col="sku", title_col="name"))

    assert books.loc["x1", "title"] == "The Name"
    assert rows == [{"book_id": "x1", "title": "The Name"}]
    with pytest.raises(DataError, match=r"no column 'isbn' \(given by --item-col\); columns found: sku, name, title"):
        read_books(path, ReadOptions(item_col="isbn"))
    with pytest.raises(DataError, match=r"no column 'label' \(given by --title-col\)"):
        read_books(path, ReadOptions(item_col="sku", title_col="label"))


def test_store_rows_of_a_movies_file_carry_goodbooks_names(tmp_path: Path) -> None:
    rows = read_book_rows(write(tmp_path / "movies.csv", MOVIES))

    assert rows[1] == {"book_id": "17", "title": "Night Train, The (2001)", "genres": "Thriller|Mystery"}


def test_the_shipped_goodbooks_books_read_whole() -> None:
    books = read_books(GOODBOOKS_BOOKS)

    assert len(books) == 10_000 and books.loc["1", "title"] == "The Hunger Games (The Hunger Games, #1)"
    assert (GOODBOOKS_BOOKS.parent / "LICENSE").read_text().startswith("This work is licensed under the Creative")
    assert "goodbooks-10k, Zygmunt Zając, CC BY-SA 4.0" in (GOODBOOKS_BOOKS.parent / "README.md").read_text()


@pytest.mark.skipif(not MOVIELENS_MOVIES.exists(), reason="MovieLens is read from ../shared/data, which is absent")
def test_movielens_movies_read_with_a_title_for_every_movie_rated() -> None:
    movies = read_books(MOVIELENS_MOVIES)
    rated = set(read_ratings(MOVIELENS).frame["item"])

    assert rated <= set(movies.index) and movies["title"].str.len().gt(0).all()
    assert movies["authors"].isna().all()


def test_books_repeated_id(tmp_path: Path) -> None:
    path = write(tmp_path / "books.csv", "book_id,title,authors\n1,a,b\n1,c,d\n")
    with pytest.raises(DataError, match="book id '1' appears more than once"):
        read_books(path)


def test_books_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_books(tmp_path / "books.csv")
    with pytest.raises(DataError, match="no rows"):
        read_books(write(tmp_path / "empty.csv", "book_id,title,authors\n"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("book_id,title,authors\n1,Caf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_books(latin)


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_is_the_sha256_and_size_of_the_bytes(tmp_path: Path) -> None:
    content = b"user_id,book_id,rating\n1,2,3\n" * 100_000  # larger than one read chunk
    path = tmp_path / "r.csv"
    path.write_bytes(content)
    assert fingerprint(path) == {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    with pytest.raises(DataError, match="no such file"):
        fingerprint(tmp_path / "missing.csv")


def test_rows_sha256_depends_on_the_rows_not_their_order() -> None:
    frame = pd.DataFrame({"user": ["1", "1", "2"], "item": ["7", "8", "7"], "rating": [4.0, 5.0, 3.5]})
    digest = rows_sha256(frame)

    assert rows_sha256(frame.iloc[[2, 0, 1]]) == digest
    assert rows_sha256(frame.assign(rating=[4.0, 5.0, 3.0])) != digest
    assert rows_sha256(frame.assign(item=["7", "9", "7"])) != digest
    assert rows_sha256(frame.iloc[:2]) != digest


# --- ratings taken in from memory (a ratings store snapshot) ----------------------------------

SNAPSHOT = {"source": "store", "url": "postgresql+psycopg://bookrec:***@db/bookrec", "rows": 2}


def test_snapshot_rows_become_ratings_data_checked_like_a_file_s() -> None:
    frame = pd.DataFrame({"user": ["42", "u7"], "item": ["8", "9"], "rating": [4.5, 2.0]})

    data = ratings_from_frame(frame, SNAPSHOT)

    assert rows(data.frame) == [("42", "8", 4.5), ("u7", "9", 2.0)]
    assert data.frame["rating"].dtype == np.float32
    assert (data.path, data.snapshot, data.duplicates_dropped) == (None, SNAPSHOT, 0)
    assert data.source == "ratings store postgresql+psycopg://bookrec:***@db/bookrec"
    assert data.digest() == {"sha256": rows_sha256(data.frame), "bytes": None}


@pytest.mark.parametrize(("bad", "shown"), [(float("nan"), "empty"), (float("-inf"), "'-inf'")], ids=["nan", "-inf"])
def test_a_snapshot_row_without_a_finite_rating_is_refused_naming_the_store_and_the_row(bad: float, shown: str) -> None:
    frame = pd.DataFrame({"user": ["1", "2", "3"], "item": ["1", "1", "1"], "rating": [4.0, bad, bad]})

    with pytest.raises(DataError) as refused:
        ratings_from_frame(frame, SNAPSHOT)

    assert str(refused.value) == (
        f"ratings store {SNAPSHOT['url']}: 2 rows have a missing or non-numeric rating in column 'rating' "
        f"(first at row 2: {shown}); fix or remove those rows"
    )


def test_an_empty_snapshot_says_how_to_fill_the_store() -> None:
    with pytest.raises(DataError, match=r"holds no ratings; fill it with `bookrec data import ratings.csv`"):
        ratings_from_frame(pd.DataFrame({"user": [], "item": [], "rating": []}), SNAPSHOT)


# --- bookrec data inspect --------------------------------------------------------------------


def test_inspect_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "r.csv", "userId,movieId,rating\n1,10,0.5\n1,11,4.5\n2,10,3\n2,10,5\n")
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows                3" in out
    assert "users               2" in out and "items               2" in out
    assert "0.5 to 5, mean 3.333" in out
    assert "duplicates dropped  1" in out
    assert "user=userId, item=movieId, rating=rating" in out


def test_inspect_json_with_read_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t1\t891717742\n")
    code = main(["data", "inspect", str(path), "--sep", "\\t", "--names", "user,item,rating,timestamp", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2 and summary["users"] == 2 and summary["items"] == 2
    assert (summary["rating_min"], summary["rating_max"], summary["rating_mean"]) == (1.0, 3.0, 2.0)
    assert summary["columns"] == {"user": "user", "item": "item", "rating": "rating"}


def test_inspect_bad_file_is_one_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "r.csv", "user_id,book_id,score\n1,2,3\n")
    assert main(["data", "inspect", str(path)]) == DataError.exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("bookrec: error: ") and "--rating-col" in captured.err
