"""The ratings store on SQLite: latest ts wins in any arrival order, deletes leave tombstones, each event is applied
once, a batch is one transaction, a snapshot is one consistent read. tests/integration/test_ratings_postgres.py runs
the same behaviour tests on PostgreSQL by overriding the `store` fixture."""

from __future__ import annotations

import csv
import itertools
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from bookrec import cli
from bookrec.ratings import store as store_module
from bookrec.ratings.store import ApplyResult, Changes, RatingsStore
from bookrec.shared.errors import ConfigError, ValidationError
from bookrec.shared.ratings import OP_DELETE, RatingEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RatingsStore]:
    """A migrated store in a SQLite file of the test's own."""
    ratings = RatingsStore(f"sqlite:///{tmp_path / 'sub' / 'ratings.db'}")
    ratings.upgrade()
    yield ratings
    ratings.close()


def live(store: RatingsStore) -> dict[tuple[str, str], float]:
    """The store's live ratings keyed by (user, book)."""
    return {(user, book): rating for user, book, rating in store.snapshot().rows}


def rate(user: str, book: str, rating: float | None, ts: float, **ids: str) -> RatingEvent:
    return RatingEvent(user, book, rating, ts, **ids)


def test_the_latest_ts_wins_whatever_order_events_arrive_in(store: RatingsStore) -> None:
    events = [rate("u", "b", 1.0, 10.0), rate("u", "b", 2.0, 30.0), rate("u", "b", 3.0, 20.0)]
    for n, order in enumerate(itertools.permutations(events)):
        one_by_one = [RatingEvent(f"u{n}", e.book_id, e.rating, e.ts) for e in order]
        one_batch = [RatingEvent(f"batch{n}", e.book_id, e.rating, e.ts) for e in order]
        for event in one_by_one:
            store.apply([event])
        store.apply(one_batch)
    ratings = live(store)
    assert len(ratings) == 12
    assert set(ratings.values()) == {2.0}, "the event at ts 30 wins in every order, batched or not"


def test_has_ratings_counts_live_ratings_only(store: RatingsStore) -> None:
    assert store.has_ratings() is False
    store.apply([rate("u", "b", 4.0, 10.0)])
    assert store.has_ratings() is True
    store.apply([RatingEvent("u", "b", None, 20.0, op="delete")])
    assert store.has_ratings() is False, "a tombstone is no rating"


def test_a_delete_leaves_a_tombstone_an_older_rate_cannot_resurrect(store: RatingsStore) -> None:
    store.apply([rate("u", "b", 4.0, 10.0)])
    store.apply([RatingEvent("u", "b", None, 30.0, op="delete")])
    store.apply([rate("u", "b", 5.0, 20.0)])  # older than the delete, arriving after it
    assert live(store) == {}
    store.apply([RatingEvent("v", "b", None, 30.0, op="delete"), rate("v", "b", 5.0, 20.0)])  # delete arrives first
    assert live(store) == {}
    store.apply([rate("u", "b", 3.0, 40.0)])  # a newer rate brings it back
    assert live(store) == {("u", "b"): 3.0}


def test_a_redelivered_event_id_or_stream_id_never_changes_the_store_twice(store: RatingsStore) -> None:
    first = rate("u", "b", 4.0, 10.0, event_id="e1")
    assert store.apply([first, rate("u", "c", 2.0, 10.0, stream_id="5-0")]) == ApplyResult(applied=2, duplicate=0)
    before = store.snapshot()
    again = [first, rate("u", "c", 2.0, 10.0, stream_id="5-0"), rate("u", "c", 2.0, 10.0, stream_id="5-0")]
    assert store.apply(again) == ApplyResult(applied=0, duplicate=3)
    assert store.snapshot() == before, "not even updated_at moves"
    in_one_batch = [rate("w", "b", 1.0, 5.0, event_id="e2"), rate("w", "b", 1.0, 5.0, event_id="e2")]
    assert store.apply(in_one_batch) == ApplyResult(applied=1, duplicate=1)


def test_an_event_seen_under_either_of_its_ids_is_a_duplicate(store: RatingsStore) -> None:
    store.apply([rate("u", "b", 4.0, 10.0, event_id="e1", stream_id="1-0")])
    result = store.apply([rate("u", "b", 1.0, 50.0, event_id="e1", stream_id="2-0")])
    assert result == ApplyResult(applied=0, duplicate=1)
    assert live(store) == {("u", "b"): 4.0}


def test_a_failing_batch_changes_nothing(store: RatingsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply([rate("u", "b", 4.0, 10.0)])
    before = store.snapshot()

    def fail(*args: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(store_module, "_advance_stream", fail)  # fails after the ids and ratings were written
    batch = [rate("u", "b", 1.0, 20.0, event_id="e1"), rate("v", "c", 2.0, 20.0, stream_id="3-0")]
    with pytest.raises(RuntimeError):
        store.apply(batch)
    assert store.snapshot() == before
    monkeypatch.undo()
    assert store.apply(batch) == ApplyResult(applied=2, duplicate=0), "the failed batch's ids were not kept either"


def test_the_summary_describes_the_snapshot_and_stream_ids_compare_as_numbers(store: RatingsStore) -> None:
    store.apply([rate("u1", "b1", 4.0, 1.0, stream_id="9-5"), rate("u1", "b2", 3.0, 1.0, stream_id="10-0")])
    store.apply([rate("u2", "b1", 5.0, 1.0, stream_id="9-9"), RatingEvent("u1", "b2", None, 2.0, op="delete")])
    snapshot = store.snapshot()
    assert sorted(snapshot.rows) == [("u1", "b1", 4.0), ("u2", "b1", 5.0)]
    summary = snapshot.summary
    assert {k: summary[k] for k in ("rows", "users", "items", "last_stream_id")} == {
        "rows": 2,
        "users": 2,
        "items": 1,
        "last_stream_id": "10-0",
    }
    assert summary["newest_updated_at"] > 0
    assert store.last_stream_id() == "10-0"


def test_apply_returns_the_rows_of_every_pair_it_named_as_they_stand_after_the_commit(store: RatingsStore) -> None:
    store.apply([rate("u1", "b1", 5.0, 20.0), rate("u2", "b2", 3.0, 10.0, event_id="once")])

    result = store.apply(
        [
            rate("u1", "b1", 1.0, 5.0),  # older than the row: the row stays
            rate("u2", "b2", 4.0, 11.0, event_id="once"),  # a duplicate: nothing applied, its pair still listed
            rate("u3", "b3", None, 7.0, op=OP_DELETE),  # a delete of a pair never rated: a tombstone
            rate("u4", "b4", 2.5, 8.0),
        ]
    )

    got = {(r.user_id, r.book_id): (r.rating, r.ts) for r in result.rows}
    assert got == {
        ("u1", "b1"): (5.0, 20.0),
        ("u2", "b2"): (3.0, 10.0),
        ("u3", "b3"): (None, 7.0),
        ("u4", "b4"): (2.5, 8.0),
    }
    assert (result.applied, result.duplicate) == (3, 1)


def test_changed_since_counts_the_rows_written_after_a_moment_tombstones_included(store: RatingsStore) -> None:
    assert store.changed_since(None) == Changes(rows=0, newest_updated_at=None)
    store.apply([rate("u1", "b1", 4.0, 10.0), rate("u1", "b2", 3.0, 10.0), rate("u2", "b1", 5.0, 10.0, event_id="e")])
    first = store.snapshot().summary["newest_updated_at"]
    assert store.changed_since(None) == Changes(rows=3, newest_updated_at=first)
    assert store.changed_since(first) == Changes(rows=0, newest_updated_at=None)

    store.apply(
        [
            rate("u1", "b1", 2.0, 20.0),  # changed
            RatingEvent("u1", "b2", None, 20.0, op="delete"),  # deleted: a tombstone is a change too
            rate("u3", "b9", 1.0, 20.0),  # new
            rate("u2", "b1", 1.0, 5.0),  # older than the row: loses, the row is not written
            rate("u2", "b1", 1.0, 30.0, event_id="e"),  # a duplicate: changes nothing
        ]
    )
    second = store.snapshot().summary["newest_updated_at"]
    assert second > first
    assert store.changed_since(first) == Changes(rows=3, newest_updated_at=second)
    assert store.changed_since(None).rows == 4


def test_a_snapshot_is_one_consistent_read_while_batches_are_applied(store: RatingsStore) -> None:
    per_batch, batches = 20, 40
    done = threading.Event()

    def writer() -> None:
        for k in range(1, batches + 1):
            store.apply([rate(f"u{k}", f"b{j}", 3.0, 1.0, stream_id=f"{k}-{j}") for j in range(per_batch)])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while not done.is_set() or seen == 0:
        summary = store.snapshot().summary
        last = summary["last_stream_id"]
        applied = 0 if last is None else int(last.split("-")[0])
        assert summary["rows"] == applied * per_batch, f"rows and last_stream_id from different moments: {summary}"
        seen += 1
    thread.join()
    assert store.snapshot().summary["rows"] == per_batch * batches


def test_malformed_events_are_refused_before_anything_is_written(store: RatingsStore) -> None:
    with pytest.raises(ValidationError, match="op 'like'"):
        store.apply([rate("u", "b", 4.0, 1.0), RatingEvent("u", "c", 4.0, 1.0, op="like")])
    with pytest.raises(ValidationError, match="has no rating"):
        store.apply([RatingEvent("u", "c", None, 1.0)])
    with pytest.raises(ValidationError, match="not a Redis stream id"):
        store.apply([rate("u", "c", 1.0, 1.0, stream_id="yesterday")])
    with pytest.raises(ValidationError, match="ts"):
        store.apply([rate("u", "c", 1.0, float("nan"))])
    with pytest.raises(ValidationError, match="rating nan is not a finite number"):
        store.apply([rate("u", "c", float("nan"), 1.0)])
    assert live(store) == {}


def test_books_from_a_goodbooks_csv_are_upserted(store: RatingsStore) -> None:
    with open(FIXTURES / "books_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert store.upsert_books(rows) == len(rows)
    renamed = dict(rows[0], title="Renamed")
    assert store.upsert_books([renamed]) == 1
    titles = store.books()
    assert len(titles) == len(rows)
    assert titles[rows[0]["book_id"]]["title"] == "Renamed"
    assert titles[rows[0]["book_id"]]["original_publication_year"] == int(float(rows[0]["original_publication_year"]))
    with pytest.raises(ValidationError, match="without a book_id"):
        store.upsert_books([{"title": "no id"}])


def test_pruning_forgets_old_applied_ids(store: RatingsStore) -> None:
    store.apply([rate("u", "b", 4.0, 10.0, event_id="e1")])
    assert store.prune_applied(older_than_s=3600) == 0
    assert store.prune_applied(older_than_s=-1) == 1
    assert store.apply([rate("u", "b", 4.0, 10.0, event_id="e1")]) == ApplyResult(applied=1, duplicate=0)


def test_the_migrations_build_exactly_the_schema_in_schema_py(store: RatingsStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bookrec.ratings.schema import metadata

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert store.upgrade() == "0002", "upgrading again is a no-op"


def test_a_store_made_at_0001_keeps_its_rows_and_takes_128_character_ids_after_the_upgrade(
    store: RatingsStore,
) -> None:
    from alembic import command
    from alembic.config import Config

    from bookrec.ratings.store import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:  # back to the first schema, as a store made before 0002 is
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    store.apply([rate("u" * 64, "b", 4.0, 10.0, event_id="e1")])

    assert store.upgrade() == "0002"
    store.apply([rate("u" * 128, "b" * 128, 3.0, 11.0, event_id="e" * 128)])

    assert sorted(store.snapshot().rows) == [("u" * 64, "b", 4.0), ("u" * 128, "b" * 128, 3.0)]
    assert store.apply([rate("u" * 64, "b", 5.0, 12.0, event_id="e1")]).duplicate == 1, "applied ids kept"


def test_counting_changes_reads_only_the_updated_at_index(store: RatingsStore) -> None:
    statements = []
    listen = lambda conn, cursor, statement, params, context, many: statements.append((statement, params))
    sa.event.listen(store.engine, "before_cursor_execute", listen)
    store.changed_since(1.0)
    sa.event.remove(store.engine, "before_cursor_execute", listen)
    statement, params = next((s, p) for s, p in statements if "count" in s)

    with store.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params))

    assert "USING COVERING INDEX ix_ratings_updated_at (updated_at>?)" in plan


def test_a_bad_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        RatingsStore("not a url")
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        RatingsStore("mysql://db/bookrec")


def test_bookrec_db_upgrade_migrates_the_configured_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOOKREC_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert cli.main(["db", "upgrade"]) == 0
    assert "is at revision 0002" in capsys.readouterr().out
    assert RatingsStore(f"sqlite:///{tmp_path / 'cli.db'}").snapshot().summary["rows"] == 0
    monkeypatch.setenv("BOOKREC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert cli.main(["db", "upgrade"]) == 11
    err = capsys.readouterr().err
    assert err.startswith("bookrec: error: ratings store at postgresql+psycopg://nobody@127.0.0.1:1/none failed")
    assert len(err.strip().splitlines()) == 1


def test_bookrec_db_upgrade_without_the_store_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "bookrec.ratings.store")
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as on `pip install bookrec` without [store]
    assert cli.main(["db", "upgrade"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bookrec: error: the ratings store needs bookrec[store] (sqlalchemy is missing): pip install 'bookrec[store]'"
    ]
