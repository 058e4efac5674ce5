"""RatingsStore: apply rating events (latest ts wins, each event once), read consistent snapshots, keep the catalogue,
and move ratings in and out in bulk (COPY on PostgreSQL, batches on SQLite; CSV out).

SQLite (the embedded default, WAL mode) and PostgreSQL (`postgresql+psycopg://…`) share one schema
(schema.py) and one code path; only the upsert statement is built per dialect.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from bookrec.ratings.schema import (
    BOOK_COLUMNS,
    ID_LENGTH,
    RATINGS_STREAM,
    applied_events,
    books,
    ratings,
    stream_state,
)
from bookrec.shared.errors import ConfigError, RatingsStoreError, ValidationError
from bookrec.shared.files import atomic_text
from bookrec.shared.ratings import OP_DELETE, OP_RATE, RatingEvent, StoredRating, stream_id_key
from bookrec.shared.settings import redact_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOOKUP_CHUNK = 500  # ids per IN (...) query, well under SQLite's bound-parameter limit
IMPORT_BATCH = 10_000
"""Rows per executemany batch (SQLite) and per progress report (both dialects) of a bulk import."""
SNAPSHOT_COLUMNS = ("user", "item", "rating")
"""The columns of `Snapshot.frame()`, as `read_ratings` names them."""
EXPORT_HEADER = ("user_id", "book_id", "rating")
"""The columns of an exported ratings CSV (goodbooks' ratings.csv, which `train` and `data import` read back)."""

Progress = Callable[[int, "int | None"], None]
"""A progress callback: (rows done so far, total rows or None when unknown)."""


@dataclass(frozen=True)
class ApplyResult:
    """What one `apply` did: events applied (newer or older than the row, each recorded once), duplicates skipped,
    and the rows of every (user, book) the batch named as they stood at its commit (duplicates' pairs included)."""

    applied: int
    duplicate: int
    rows: tuple[StoredRating, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Transfer:
    """What one bulk import or export moved: rows, distinct users and items among them, and the seconds it took."""

    rows: int
    users: int
    items: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The counts as a dict {rows, users, items, seconds} (the CLI's --json summary)."""
        return asdict(self)


@dataclass(frozen=True)
class Snapshot:
    """The live ratings (user_id, book_id, rating) of one consistent read, and its summary."""

    rows: list[tuple[str, str, float]]
    summary: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> Any:
        """The rows as a pandas DataFrame with columns user, item, rating (needs bookrec[worker])."""
        import pandas as pd

        with _gc_paused():
            users, items, values = zip(*self.rows) if self.rows else ((), (), ())
        return pd.DataFrame(
            {"user": list(users), "item": list(items), "rating": list(values)}, columns=SNAPSHOT_COLUMNS
        )


@dataclass(frozen=True)
class Changes:
    """The ratings rows the store wrote after some moment: how many, and the newest `updated_at` among them."""

    rows: int
    newest_updated_at: float | None


@dataclass(frozen=True)
class ReaderRatings:
    """One reader's live ratings, newest first, each a dict {book_id, rating, ts, title, authors, year, image_url}
    (the book's fields None when the catalogue lacks it), and how many live ratings the reader has in all."""

    rows: tuple[dict[str, Any], ...]
    total: int


class RatingsStore:
    """The durable ratings store at a SQLAlchemy URL (BOOKREC_DATABASE_URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    def __repr__(self) -> str:
        return f"RatingsStore({redact_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def upgrade(self, revision: str = "head") -> str:
        """Migrate the schema to `revision` (default the newest) with Alembic; return the revision now current."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            current = MigrationContext.configure(conn).get_current_revision()
        log.info("ratings store %s is at revision %s", redact_url(self.url), current)
        return current or ""

    def apply(self, events: Sequence[RatingEvent]) -> ApplyResult:
        """Write one batch of events in one transaction: for each (user, book) the latest ts wins, whatever the
        arrival order, a delete leaves a tombstone, and an event whose event_id or stream id was applied before
        is skipped. ValidationError (nothing written) for a malformed event."""
        for event in events:
            _check(event)
        now = time.time()
        with self._begin(write=True) as conn:
            fresh = _claim_ids(conn, events, now)
            written = _upsert_ratings(conn, _latest_per_pair(fresh), now)
            others = {(str(e.user_id), str(e.book_id)) for e in events}.difference(
                (r.user_id, r.book_id) for r in written
            )
            _advance_stream(conn, fresh, now)
            rows = (*written, *_rows_of(conn, others))
        return ApplyResult(applied=len(fresh), duplicate=len(events) - len(fresh), rows=rows)

    def rows_since(self, updated_after: float) -> tuple[list[StoredRating], str | None]:
        """Every row the store wrote after `updated_after` (epoch seconds), tombstones included, and the newest
        stream id applied so far, in one transaction."""
        with self._begin(snapshot=True) as conn:
            query = sa.select(*_ROW_COLUMNS).where(ratings.c.updated_at > updated_after)
            rows = [_stored(r) for r in conn.execute(query.order_by(ratings.c.user_id, ratings.c.book_id))]
            return rows, _last_stream_id(conn)

    def snapshot(self) -> Snapshot:
        """The live ratings and their summary {rows, users, items, newest_updated_at, last_stream_id}, all read in
        one transaction so a concurrent apply is either wholly in it or not at all."""
        with self._begin(snapshot=True) as conn:
            rows = _live_rows(conn)
            newest = conn.execute(sa.select(sa.func.max(ratings.c.updated_at))).scalar()
            last = _last_stream_id(conn)
        summary = {
            "rows": len(rows),
            "users": len({r[0] for r in rows}),
            "items": len({r[1] for r in rows}),
            "newest_updated_at": newest,
            "last_stream_id": last,
        }
        return Snapshot(rows=rows, summary=summary)

    def changed_since(self, since: float | None) -> Changes:
        """How many ratings rows (live ratings and tombstones) the store wrote after `since` (epoch seconds, as
        `updated_at` and a snapshot's `newest_updated_at`; None: every row), and the newest `updated_at` among them.
        A range scan of the `updated_at` index."""
        query = sa.select(sa.func.count(), sa.func.max(ratings.c.updated_at))
        if since is not None:
            query = query.where(ratings.c.updated_at > since)
        with self._begin() as conn:
            rows, newest = conn.execute(query).one()
        return Changes(rows=int(rows), newest_updated_at=newest)

    def has_ratings(self) -> bool:
        """Whether the store holds at least one live rating (one indexed look, not a snapshot)."""
        with self._begin() as conn:
            query = sa.select(ratings.c.user_id).where(ratings.c.rating.is_not(None)).limit(1)
            return conn.execute(query).first() is not None

    def last_stream_id(self) -> str | None:
        """The newest stream id applied so far, None before the first."""
        with self._begin() as conn:
            return _last_stream_id(conn)

    def upsert_books(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert or replace catalogue rows (dicts keyed by books.csv column names; others ignored) in one
        transaction; return how many. ValidationError for a row without a book_id."""
        now = time.time()
        values = [_book_row(row, now) for row in rows]
        if values:
            with self._begin(write=True) as conn:
                conn.execute(_upsert_books(conn.dialect.name), values)
        return len(values)

    def import_books(self, rows: Sequence[dict[str, Any]], progress: Progress | None = None) -> int:
        """Insert or replace a whole catalogue (as `upsert_books`) in one transaction, in batches reporting
        `progress`; return how many rows. ValidationError (nothing written) for a bad row."""
        now = time.time()
        values = [_book_row(row, now) for row in rows]
        with self._begin(write=True) as conn:
            stmt = _upsert_books(conn.dialect.name)
            for start in range(0, len(values), IMPORT_BATCH):
                conn.execute(stmt, values[start : start + IMPORT_BATCH])
                if progress:
                    progress(min(start + IMPORT_BATCH, len(values)), len(values))
        return len(values)

    def import_ratings(self, rows: Any, progress: Progress | None = None) -> Transfer:
        """Merge ratings in bulk in one transaction: a pandas frame with columns user, item, rating (and
        optionally ts), or an iterable of (user_id, book_id, rating[, ts]) tuples. For each (user, book) the
        latest ts wins against the store, as in `apply`, and the last row wins among the input's own
        duplicates; a row without ts gets the import's time. PostgreSQL: COPY into a temporary table and one
        INSERT … ON CONFLICT; SQLite: executemany batches. ValidationError (nothing written) for a bad row."""
        started, now = time.monotonic(), time.time()
        tally = _Tally(len(rows) if hasattr(rows, "__len__") else None, progress)
        checked = tally.count(_import_rows(rows, now))
        with self._begin(write=True) as conn:
            if conn.dialect.name == "postgresql":
                _copy_merge(conn, checked, now)
            else:
                _batched_upsert(conn, checked, now)
        seconds = round(time.monotonic() - started, 3)
        log.info("imported %d ratings into %s in %.1f s", tally.rows, redact_url(self.url), seconds)
        return Transfer(rows=tally.rows, users=len(tally.users), items=len(tally.items), seconds=seconds)

    def export_csv(self, path: Path) -> Transfer:
        """Write the live ratings of one snapshot to `path` as CSV (user_id,book_id,rating), atomically: the
        file appears whole or not at all."""
        started = time.monotonic()
        snap = self.snapshot()
        with atomic_text(Path(path)) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(EXPORT_HEADER)
            writer.writerows((user, book, repr(rating)) for user, book, rating in snap.rows)
        summary = snap.summary
        seconds = round(time.monotonic() - started, 3)
        return Transfer(rows=summary["rows"], users=summary["users"], items=summary["items"], seconds=seconds)

    def books(self) -> dict[str, dict[str, Any]]:
        """The catalogue: each book's columns keyed by book_id."""
        with self._begin() as conn:
            return {row.book_id: dict(row._mapping) for row in conn.execute(sa.select(books))}

    def reader_ratings(self, user_id: str, limit: int = 100) -> ReaderRatings:
        """One reader's live ratings, newest `ts` first (at most `limit`), with their books' title, authors, year
        and cover from the catalogue, and how many they have in all; one transaction, by the primary key."""
        live = sa.and_(ratings.c.user_id == user_id, ratings.c.rating.is_not(None))
        query = (
            sa.select(
                ratings.c.book_id,
                ratings.c.rating,
                ratings.c.ts,
                books.c.title,
                books.c.authors,
                books.c.original_publication_year.label("year"),
                books.c.image_url,
            )
            .select_from(ratings.outerjoin(books, books.c.book_id == ratings.c.book_id))
            .where(live)
            .order_by(ratings.c.ts.desc(), ratings.c.book_id)
            .limit(limit)
        )
        with self._begin(snapshot=True) as conn:
            rows = tuple(dict(row._mapping) for row in conn.execute(query))
            total = conn.execute(sa.select(sa.func.count()).select_from(ratings).where(live)).scalar_one()
        return ReaderRatings(rows=rows, total=int(total))

    def prune_applied(self, older_than_s: float) -> int:
        """Forget applied event and stream ids recorded more than `older_than_s` seconds ago; return how many."""
        with self._begin(write=True) as conn:
            cutoff = time.time() - older_than_s
            return conn.execute(sa.delete(applied_events).where(applied_events.c.applied_at < cutoff)).rowcount

    def _begin(self, write: bool = False, snapshot: bool = False) -> "_transaction":
        return _transaction(self, write=write, snapshot=snapshot)


class _transaction:
    """A context manager around one transaction that turns driver errors into RatingsStoreError."""

    def __init__(self, store: RatingsStore, write: bool, snapshot: bool) -> None:
        self.store, self.write, self.snapshot = store, write, snapshot

    def __enter__(self) -> Connection:
        try:
            options: dict[str, Any] = {"bookrec_write": self.write}
            if self.snapshot and self.store.engine.dialect.name == "postgresql":
                options["isolation_level"] = "REPEATABLE READ"
            self.conn = self.store.engine.connect().execution_options(**options)
            self.trans = self.conn.begin()
        except SQLAlchemyError as exc:
            raise _store_error(self.store.url, exc) from exc
        return self.conn

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if kind is None:
                self.trans.commit()
            else:
                self.trans.rollback()
        except SQLAlchemyError as error:
            raise _store_error(self.store.url, error) from error
        finally:
            self.conn.close()
        if isinstance(exc, (SQLAlchemyError, self.store.engine.dialect.loaded_dbapi.Error)):  # the latter from COPY
            raise _store_error(self.store.url, exc) from exc


def _store_error(url: str, exc: Exception) -> RatingsStoreError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return RatingsStoreError(f"ratings store at {redact_url(url)} failed: {reason}")


def missing_file(url: str) -> Path | None:
    """The file a SQLite `url` names when it does not exist (opening the store would create it); None for an
    existing file, an in-memory database or PostgreSQL. ConfigError for a URL bookrec cannot use."""
    parsed = database_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def database_url(url: str) -> URL:
    """`url` as a SQLAlchemy URL the store can open (a plain postgresql:// goes through psycopg 3, which bookrec
    ships, not SQLAlchemy's default psycopg2); ConfigError naming the problem otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"BOOKREC_DATABASE_URL={redact_url(url)!r} is not a database URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"BOOKREC_DATABASE_URL: {backend!r} is not supported; use sqlite or postgresql+psycopg")
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def _engine(url: str) -> Engine:
    """An engine for `url`: SQLite in WAL mode with explicit BEGINs (so a snapshot is one read), or PostgreSQL."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "postgresql":
        # No server-side prepared statements: psycopg would prepare a statement after five runs and PostgreSQL
        # could then keep the plan it made while the tables were near empty (a sequential scan of applied_events
        # for every batch: the ingest fell to under 2,000 events/s as the table grew). Planned afresh each time.
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"prepare_threshold": None})
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # pysqlite's own BEGIN handling off: _sqlite_begin emits it
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock at once, so it never fails upgrading a stale read snapshot to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("bookrec_write") else "BEGIN")


_LIVE = "SELECT user_id, book_id, rating FROM ratings WHERE rating IS NOT NULL ORDER BY user_id, book_id"


def _live_rows(conn: Connection) -> list[tuple[str, str, float]]:
    """Every live rating as (user_id, book_id, rating), ordered by user then book: fetched whole through the DB-API
    cursor, whose driver builds the tuples in C (SQLAlchemy's Row objects cost seconds per million rows)."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(_LIVE)
        with _gc_paused():
            return cursor.fetchall()
    finally:
        cursor.close()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a million tuples are built: none of them can form a cycle, and the
    collections their allocations would trigger, each walking every object alive, otherwise take longer than the
    building."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check(event: RatingEvent) -> None:
    """ValidationError naming what is wrong with `event`."""
    op, rating = event.op, event.rating
    if op != OP_RATE and op != OP_DELETE:
        raise ValidationError(f"event op {op!r} is neither {OP_RATE!r} nor {OP_DELETE!r}")
    if op == OP_RATE and rating is None:
        raise ValidationError(f"rate event for user {event.user_id} book {event.book_id} has no rating")
    if op == OP_RATE and not _is_finite(rating):
        raise ValidationError(
            f"rate event for user {event.user_id} book {event.book_id}: rating {rating!r} is not a finite number"
        )
    for name, value in (
        ("user_id", event.user_id),
        ("book_id", event.book_id),
        ("event_id", event.event_id),
        ("stream_id", event.stream_id),
    ):
        if value is not None and not 0 < len(value if value.__class__ is str else str(value)) <= ID_LENGTH:
            raise ValidationError(f"event {name} {value!r} must be 1 to {ID_LENGTH} characters")
    ts = event.ts
    if not (ts.__class__ is float or isinstance(ts, (int, float))) or not math.isfinite(ts):
        raise ValidationError(f"event ts {ts!r} for user {event.user_id} book {event.book_id} is not epoch seconds")
    if event.stream_id is not None:
        stream_id_key(event.stream_id)


def _is_finite(value: Any) -> bool:
    """Whether `value` is a number (or its text) that is neither infinite nor NaN."""
    if value.__class__ is float:
        return math.isfinite(value)
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _ids(event: RatingEvent) -> list[tuple[str, str]]:
    """The (kind, id) keys that identify `event` for idempotency."""
    keys = []
    if event.event_id is not None:
        keys.append(("event", str(event.event_id)))
    if event.stream_id is not None:
        keys.append(("stream", event.stream_id))
    return keys


def _claim_ids(conn: Connection, events: Sequence[RatingEvent], now: float) -> list[RatingEvent]:
    """The events of `events` not applied before (in the store or earlier in this batch), their ids recorded in
    applied_events. An event is known by its first id, its event_id if it has one, else its stream id (a stream
    entry redelivered carries the same event_id): those go in with one INSERT … ON CONFLICT DO NOTHING RETURNING,
    so an id another writer is recording at the same moment waits for its commit and counts as seen (concurrent
    ingests never fail on the key); the stream ids of fresh events with an event_id follow in a second INSERT."""
    ids = [_ids(event) for event in events]
    first = [(kind, i, now) for kind, i in dict.fromkeys(keys[0] for keys in ids if keys)]
    new = set(_insert_many(conn, applied_events, _ID_COLUMNS, first, _ID_IS_NEW, _ID_COLUMNS[:2])) if first else set()
    fresh, also = [], []
    for event, keys in zip(events, ids):
        if not keys:
            fresh.append(event)
        elif keys[0] in new:
            new.discard(keys[0])  # a second event with the same id in this batch is a duplicate
            fresh.append(event)
            also += [(kind, i, now) for kind, i in keys[1:]]
    if also:
        _insert_many(conn, applied_events, _ID_COLUMNS, also, _ID_IS_NEW)
    return fresh


_ID_COLUMNS = ("kind", "id", "applied_at")
_ID_IS_NEW = "ON CONFLICT (kind, id) DO NOTHING"


def _latest_per_pair(events: Sequence[RatingEvent]) -> list[RatingEvent]:
    """For each (user, book) the event with the latest ts (the later one in the batch on a tie)."""
    latest: dict[tuple[str, str], RatingEvent] = {}
    for event in events:
        key = (str(event.user_id), str(event.book_id))
        if key not in latest or event.ts >= latest[key].ts:
            latest[key] = event
    return list(latest.values())


_ROW_COLUMNS = (ratings.c.user_id, ratings.c.book_id, ratings.c.rating, ratings.c.ts, ratings.c.updated_at)


def _stored(row: Any) -> StoredRating:
    rating = None if row.rating is None else float(row.rating)
    return StoredRating(row.user_id, row.book_id, rating, float(row.ts), float(row.updated_at))


def _rows_of(conn: Connection, pairs: set[tuple[str, str]]) -> tuple[StoredRating, ...]:
    """The rows of `pairs` (user_id, book_id) as they stand in this transaction, each found by a primary-key probe.
    PostgreSQL: the pairs one JSON parameter, each looked up in a LATERAL subquery (as `_applied_among`); SQLite: a
    VALUES list joined to the table (a row-value `IN (VALUES …)` is planned as a scan of every rating)."""
    if not pairs:
        return ()
    ordered = sorted(pairs)
    if conn.dialect.name == "postgresql":
        query = sa.text(
            "SELECT r.user_id, r.book_id, r.rating, r.ts, r.updated_at "
            "FROM json_to_recordset(CAST(:pairs AS json)) AS p(u text, b text) JOIN LATERAL "
            "(SELECT * FROM ratings WHERE user_id = p.u AND book_id = p.b LIMIT 1) AS r ON true"
        )
        found = conn.execute(query, {"pairs": json.dumps([{"u": u, "b": b} for u, b in ordered])})
        return tuple(_stored(r) for r in found)
    rows: list[StoredRating] = []
    chunk = _LOOKUP_CHUNK // 2  # two parameters a pair
    for start in range(0, len(ordered), chunk):
        part = ordered[start : start + chunk]
        query = (
            f"WITH p(u, b) AS (VALUES {', '.join(['(?, ?)'] * len(part))}) "
            "SELECT r.user_id, r.book_id, r.rating, r.ts, r.updated_at "
            "FROM p JOIN ratings AS r ON r.user_id = p.u AND r.book_id = p.b"
        )
        rows.extend(_stored(r) for r in conn.exec_driver_sql(query, tuple(x for pair in part for x in pair)))
    return tuple(rows)


_RATING_COLUMNS = ("user_id", "book_id", "rating", "ts", "updated_at")


def _upsert_ratings(conn: Connection, events: Sequence[RatingEvent], now: float) -> list[StoredRating]:
    """Upsert one row per event (at most one per pair) with LATEST_TS_WINS; the rows it wrote, as written (a pair
    whose row holds a later event is left as it is and not among them)."""
    if not events:
        return []
    values = [
        (str(e.user_id), str(e.book_id), None if e.op == OP_DELETE else float(e.rating), e.ts, now) for e in events
    ]
    returned = _insert_many(conn, ratings, _RATING_COLUMNS, values, LATEST_TS_WINS, _RATING_COLUMNS)
    return [StoredRating(u, b, None if r is None else float(r), float(t), float(w)) for u, b, r, t, w in returned]


def _dialect_insert(dialect: str, table: sa.Table) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


LATEST_TS_WINS = (
    "ON CONFLICT (user_id, book_id) DO UPDATE SET rating = excluded.rating, ts = excluded.ts, "
    "updated_at = excluded.updated_at WHERE excluded.ts >= ratings.ts"
)
"""The ratings upsert's rule, in every statement writing ratings: a row changes only for an event not older than it."""


def _insert_many(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    suffix: str = "",
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """INSERT `rows` (tuples of `columns` of `table`) followed by `suffix` (an ON CONFLICT clause); the `returning`
    columns of the rows the statement inserted or updated ([] without). PostgreSQL: one statement reading the rows
    from one JSON parameter (one round trip and one plan for any number of rows, and JSON is dumped in C where
    psycopg dumps arrays element by element in Python); SQLite: the driver's executemany of the tuples (it loops in
    C; SQLAlchemy's handling of each row cost twice the insert itself), or multi-row VALUES statements when rows
    come back (executemany returns none)."""
    names = ", ".join(columns)
    back = f" RETURNING {', '.join(returning)}" if returning else ""
    if conn.dialect.name == "postgresql":
        fields = ", ".join(f"CAST(x->>{n} AS {table.c[c].type.compile(conn.dialect)})" for n, c in enumerate(columns))
        statement = (
            f"INSERT INTO {table.name} ({names}) SELECT {fields} FROM json_array_elements(CAST(:rows AS json)) AS x "
            f"{suffix}{back}"
        )
        result = conn.execute(sa.text(statement), {"rows": json.dumps(rows)})
        return [tuple(r) for r in result] if returning else []  # plain tuples, as from SQLite
    if not returning:
        statement = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))}) {suffix}"
        conn.exec_driver_sql(statement, list(rows))
        return []
    written: list[tuple[Any, ...]] = []
    per = max(1, min(len(rows), _sqlite_variables(conn) // len(columns)))
    one = f"({', '.join('?' * len(columns))})"
    cursor = conn.connection.driver_connection.cursor()  # plain tuples back: SQLAlchemy's Rows hash and compare slowly
    try:
        for start in range(0, len(rows), per):
            part = rows[start : start + per]
            statement = f"INSERT INTO {table.name} ({names}) VALUES {', '.join([one] * len(part))} {suffix}{back}"
            written += cursor.execute(statement, [x for row in part for x in row]).fetchall()
    finally:
        cursor.close()
    return written


def _sqlite_variables(conn: Connection) -> int:
    """How many bound parameters one SQLite statement may hold (999 before SQLite 3.32, 32,766 since)."""
    import sqlite3

    return conn.connection.driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


def _upsert_books(dialect: str) -> Any:
    """INSERT … ON CONFLICT (book_id) DO UPDATE of every catalogue column."""
    stmt = _dialect_insert(dialect, books)
    return stmt.on_conflict_do_update(
        index_elements=[books.c.book_id],
        set_={c: stmt.excluded[c] for c in (*BOOK_COLUMNS[1:], "updated_at")},
    )


class _Tally:
    """Counts rows, users and items passing through an import and reports progress every IMPORT_BATCH rows."""

    def __init__(self, total: int | None, progress: Progress | None) -> None:
        self.total, self.progress = total, progress
        self.rows = 0
        self.users: set[str] = set()
        self.items: set[str] = set()

    def count(self, rows: Iterable[tuple[str, str, float, float]]) -> Iterator[tuple[str, str, float, float]]:
        """Yield `rows` unchanged, counting them."""
        for row in rows:
            self.users.add(row[0])
            self.items.add(row[1])
            self.rows += 1
            if self.progress and self.rows % IMPORT_BATCH == 0:
                self.progress(self.rows, self.total)
            yield row
        if self.progress:
            self.progress(self.rows, self.total)


def _import_rows(rows: Any, now: float) -> Iterator[tuple[str, str, float, float]]:
    """(user_id, book_id, rating, ts) for each input row, checked; ts defaults to `now`."""
    if hasattr(rows, "itertuples"):  # a pandas frame (the store itself needs no pandas)
        columns = ["user", "item", "rating", *(["ts"] if "ts" in rows.columns else [])]
        rows = rows[columns].itertuples(index=False, name=None)
    for number, row in enumerate(rows, start=1):
        yield _import_row(number, row, now)


def _import_row(number: int, row: Sequence[Any], now: float) -> tuple[str, str, float, float]:
    """One import row as (user_id, book_id, rating, ts); ValidationError naming the row if it is not one."""
    if len(row) not in (3, 4):
        raise ValidationError(f"import row {number}: {tuple(row)!r} is not (user_id, book_id, rating[, ts])")
    user, book = str(row[0]), str(row[1])
    for name, value in (("user_id", user), ("book_id", book)):
        if not 0 < len(value) <= ID_LENGTH:
            raise ValidationError(f"import row {number}: {name} {value!r} must be 1 to {ID_LENGTH} characters")
    rating = _finite(number, "rating", row[2])
    ts = _finite(number, "ts", row[3]) if len(row) == 4 else now
    return user, book, rating, ts


def _finite(number: int, name: str, value: Any) -> float:
    """`value` as a finite float; ValidationError naming the import row otherwise."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        result = math.nan
    if not math.isfinite(result):
        raise ValidationError(f"import row {number}: {name} {value!r} is not a finite number")
    return result


def _batched_upsert(conn: Connection, rows: Iterable[tuple[str, str, float, float]], now: float) -> None:
    """SQLite: the ratings upsert of `apply` as executemany batches of IMPORT_BATCH rows (rows apply in order,
    so of two rows for one pair with the same ts the later wins)."""
    batch: list[tuple[str, str, float, float, float]] = []
    for user, book, rating, ts in rows:
        batch.append((user, book, rating, ts, now))
        if len(batch) == IMPORT_BATCH:
            _insert_many(conn, ratings, _RATING_COLUMNS, batch, LATEST_TS_WINS)
            batch = []
    if batch:
        _insert_many(conn, ratings, _RATING_COLUMNS, batch, LATEST_TS_WINS)


_MERGE = sa.text(
    "INSERT INTO ratings (user_id, book_id, rating, ts, updated_at) "
    "SELECT DISTINCT ON (user_id, book_id) user_id, book_id, rating, ts, :now "
    f"FROM bookrec_import ORDER BY user_id, book_id, ts DESC, seq DESC {LATEST_TS_WINS}"
)
"""PostgreSQL: merge the COPYed rows, the latest ts (then the last row) of each pair, latest ts winning."""


def _copy_merge(conn: Connection, rows: Iterable[tuple[str, str, float, float]], now: float) -> None:
    """PostgreSQL: COPY `rows` into a temporary table (dropped at commit), then merge it with one statement."""
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE bookrec_import (seq bigint, user_id varchar({ID_LENGTH}), book_id varchar({ID_LENGTH}), "
        "rating double precision, ts double precision) ON COMMIT DROP"
    )
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy("COPY bookrec_import (seq, user_id, book_id, rating, ts) FROM STDIN") as copy:
            for seq, row in enumerate(rows):
                copy.write_row((seq, *row))
    conn.execute(_MERGE, {"now": now})


def _last_stream_id(conn: Connection) -> str | None:
    return conn.execute(_LAST_STREAM_ID, {"stream_name": RATINGS_STREAM}).scalar()


# Built once: building a statement costs more than running it, and the ingest advances the stream every batch.
_LAST_STREAM_ID = sa.select(stream_state.c.last_stream_id).where(stream_state.c.stream == sa.bindparam("stream_name"))
_LAST_STREAM_ID_FOR_UPDATE = _LAST_STREAM_ID.with_for_update()
_START_STREAM = sa.insert(stream_state).values(
    stream=sa.bindparam("stream_name"), last_stream_id=sa.bindparam("newest"), updated_at=sa.bindparam("now")
)
_ADVANCE_STREAM = (
    sa.update(stream_state)
    .where(stream_state.c.stream == sa.bindparam("stream_name"))
    .values(last_stream_id=sa.bindparam("newest"), updated_at=sa.bindparam("now"))
)


def _advance_stream(conn: Connection, events: Sequence[RatingEvent], now: float) -> None:
    """Move stream_state's last_stream_id to the newest stream id among `events` if it is newer."""
    ids = [e.stream_id for e in events if e.stream_id is not None]
    if not ids:
        return
    newest = max(ids, key=stream_id_key)
    params = {"stream_name": RATINGS_STREAM, "newest": newest, "now": now}
    current = conn.execute(_LAST_STREAM_ID_FOR_UPDATE, params).scalar()
    if current is None:
        conn.execute(_START_STREAM, params)
    elif stream_id_key(newest) > stream_id_key(current):
        conn.execute(_ADVANCE_STREAM, params)


def _book_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A books-table row from a books.csv record: known columns only, blanks as NULL."""
    book_id = row.get("book_id")
    if book_id is None or str(book_id).strip() == "":
        raise ValidationError(f"book row without a book_id: {dict(list(row.items())[:3])}")
    values = {c: _typed(books.c[c], row.get(c), book_id) for c in BOOK_COLUMNS}
    values["book_id"] = str(book_id).strip()
    values["updated_at"] = now
    return values


def _typed(column: sa.Column, value: Any, book_id: Any) -> Any:
    """`value` as `column` stores it (text as text, "2008.0" as 2008), blanks and NaN as NULL."""
    if value is None or (isinstance(value, str) and value.strip() == "") or value != value:  # NaN != NaN
        return None
    try:
        if isinstance(column.type, sa.Integer):
            return int(float(value))
        if isinstance(column.type, sa.Double):
            return float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"book {book_id}: {column.name} {value!r} is not a number") from None
    return str(value)
