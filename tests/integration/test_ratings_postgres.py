"""The ratings store's behaviour tests (tests/unit/test_ratings_store.py) on the real PostgreSQL at
BOOKREC_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres, trust auth), each in a
database of its own that is dropped afterwards; skipped with the reason when PostgreSQL does not answer."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Iterator

import pytest
import sqlalchemy as sa

from bookrec.ratings.store import ApplyResult, RatingsStore
from bookrec.shared.ratings import RatingEvent
from tests.unit.test_ratings_store import (  # noqa: F401  (collected here again, on PostgreSQL)
    test_a_delete_leaves_a_tombstone_an_older_rate_cannot_resurrect,
    test_a_failing_batch_changes_nothing,
    test_a_redelivered_event_id_or_stream_id_never_changes_the_store_twice,
    test_a_snapshot_is_one_consistent_read_while_batches_are_applied,
    test_a_store_made_at_0001_keeps_its_rows_and_takes_128_character_ids_after_the_upgrade,
    test_an_event_seen_under_either_of_its_ids_is_a_duplicate,
    test_apply_returns_the_rows_of_every_pair_it_named_as_they_stand_after_the_commit,
    test_books_from_a_goodbooks_csv_are_upserted,
    test_changed_since_counts_the_rows_written_after_a_moment_tombstones_included,
    test_has_ratings_counts_live_ratings_only,
    test_malformed_events_are_refused_before_anything_is_written,
    test_pruning_forgets_old_applied_ids,
    test_the_latest_ts_wins_whatever_order_events_arrive_in,
    test_the_migrations_build_exactly_the_schema_in_schema_py,
    test_the_summary_describes_the_snapshot_and_stream_ids_compare_as_numbers,
)

pytestmark = pytest.mark.integration

ADMIN_URL = os.environ.get("BOOKREC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the server's maintenance database; skips the module if PostgreSQL does not answer."""
    engine = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.skip(
            f"PostgreSQL does not answer at {ADMIN_URL} ({str(exc.orig).strip().splitlines()[0]}); .ci/run starts one"
        )
    yield engine
    engine.dispose()


@pytest.fixture
def store(admin: sa.Engine) -> Iterator[RatingsStore]:
    """A migrated store in a fresh database bookrec_test_<random>, dropped after the test."""
    name = f"bookrec_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    ratings = RatingsStore(admin.url.set(database=name).render_as_string(hide_password=False))
    try:
        ratings.upgrade()
        yield ratings
    finally:
        ratings.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_the_store_really_is_postgresql(store: RatingsStore) -> None:
    assert store.engine.dialect.name == "postgresql"
    assert store.engine.driver == "psycopg"


def test_two_writers_applying_one_event_id_at_once_neither_fails_and_it_lands_once(store: RatingsStore) -> None:
    other = RatingsStore(store.url)  # a second ingest: its own engine and connection
    first = RatingEvent("u", "b", 4.0, 100.0, event_id="e-1", stream_id="5-0")
    again = RatingEvent("u", "b", 2.0, 200.0, event_id="e-1", stream_id="6-0")  # the same event, sent again
    results: list[object] = []
    try:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # a fresh look each time
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            with store._begin(write=True) as holding:  # the first writer is mid-transaction, e-1 recorded
                holding.exec_driver_sql("INSERT INTO applied_events VALUES ('event', 'e-1', 0)")
                racer = threading.Thread(target=lambda: results.append(_apply_or_error(other, again)))
                racer.start()
                deadline = time.monotonic() + 10
                while conn.execute(sa.text(query)).scalar() == 0:  # the second waits on the first's key
                    assert time.monotonic() < deadline, "the second writer never waited for the first"
                    time.sleep(0.01)
            racer.join(10)
    finally:
        other.close()

    assert results == [ApplyResult(applied=0, duplicate=1)], "the second writer sees the id, and does not fail"
    assert store.apply([first]).duplicate == 1


def _apply_or_error(store: RatingsStore, event: RatingEvent) -> object:
    try:
        return store.apply([event])
    except Exception as exc:  # the assertion shows what went wrong
        return exc
