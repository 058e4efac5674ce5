"""Bulk import and export (tests/unit/test_ratings_bulk.py) on the real PostgreSQL, where import_ratings COPYs into a
temporary table and merges it with one statement; each test in a database of its own, dropped afterwards (fixtures
of tests/integration/test_ratings_postgres.py); skipped with the reason when PostgreSQL does not answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec import cli
from bookrec.ratings.store import RatingsStore
from tests.integration.test_ratings_postgres import admin, store  # noqa: F401  (the fixtures)
from tests.unit.test_ratings_bulk import (  # noqa: F401  (collected here again, on PostgreSQL)
    RATINGS,
    file_ratings,
    live,
    test_a_bad_row_refuses_the_whole_import,
    test_an_export_reads_back_as_the_same_ratings,
    test_an_import_merges_with_the_store_as_events_do_the_latest_ts_winning,
    test_an_imported_file_snapshots_as_train_reads_it_the_last_duplicate_winning,
    test_books_import_from_a_goodbooks_csv,
    test_duplicate_rows_given_directly_keep_the_latest_ts_then_the_last_row,
    test_progress_reaches_the_total,
    write_csv,
)

pytestmark = pytest.mark.integration


def test_the_import_takes_the_copy_path_and_leaves_no_temporary_table(store: RatingsStore) -> None:  # noqa: F811
    assert store.engine.dialect.name == "postgresql"
    store.import_ratings([("u", "b", 4.0), ("u", "b", 5.0)])
    store.import_ratings([("v", "b", 3.0)])  # a second import in a new transaction: the temp table was dropped
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('bookrec_import')")).scalar() is None
    assert live(store) == {("u", "b"): 5.0, ("v", "b"): 3.0}


def test_the_cli_imports_into_postgresql_and_exports_it_back(
    store: RatingsStore,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    source = write_csv(tmp_path / "ratings.csv", ["user_id", "book_id", "rating"], RATINGS)
    assert cli.main(["data", "import", str(source), "--database", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 4
    assert cli.main(["data", "export", str(tmp_path / "out.csv"), "--database", url]) == 0
    assert file_ratings(tmp_path / "out.csv") == file_ratings(source) == live(store)
