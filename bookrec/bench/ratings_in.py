"""`bookrec bench`'s ratings-in phase: how fast ratings get into the ratings store, each figure beside a reference
measured in the same run (README: Benchmarks, "Ratings in").

Each store is fresh: SQLite (WAL) in a file in a temporary directory, PostgreSQL in a database of its own,
`bookrec_bench_<random>`, made on the server `Plan.postgres_url` names and dropped at the end.

- **Ingest rate**, per store: `events` rating events XADDed in pipelines (the raw XADD rate is a reference) before a
  real `bookrec ingest` process starts; timed from the moment it creates its consumer group until the group has
  delivered the last entry and holds none pending (the ingest acknowledges a batch only after its commit), then
  checked against the store's last stream id. events/s = events / that time. References: the same rows loaded into
  a bare table (no key, no index) in one transaction (PostgreSQL: COPY; SQLite: executemany INSERT), and the events
  per CPU-second of the ingest process and its PostgreSQL server process, which does not depend on how much CPU
  other processes left.
- **Latency**, per store: the same ingest, now idle, fed single XADDs at `rate` events/s for `latency_s`; an event's
  latency runs from just before its XADD to the first poll of the store (a SELECT of `stream_state` on a connection
  held open) that shows it committed. `stream_state.last_stream_id` moves in each batch's own transaction and one
  ingest applies the stream in order, so an event is committed once that id reaches its own: this is what a reader
  of the store sees, to within one poll (about a millisecond). Reference: a Redis PING round trip and the XADDs'
  own, and the rate the events really went out at.
- **Bulk import** into PostgreSQL: `bookrec data import` of the catalogue's ratings.csv as a subprocess, wall time,
  into an empty database, beside `psql \\copy` of the same file into a bare table and into one keyed like ratings.
  The same command into SQLite is shown beside it.
- **Snapshot**: `RatingsStore.snapshot().frame()` of those imported ratings (what a retrain reads) from both stores,
  median of `repeats`, beside `pandas.read_csv` of the same file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import redis
import sqlalchemy as sa

from bookrec.bench import DEFAULT_POSTGRES, machine
from bookrec.bench.catalogue import Data
from bookrec.bench.measure import median, percentile
from bookrec.bench.service import Service
from bookrec.ingest.consumer import group_info
from bookrec.ratings.schema import RATINGS_STREAM, stream_state
from bookrec.ratings.store import RatingsStore, database_url, stream_id_key
from bookrec.shared.errors import BookrecError, ConfigError, MissingDependency, RatingsStoreError
from bookrec.shared.settings import Settings, redact_url

PIPELINE = 1000  # XADDs per pipeline when pre-loading
POLL_S = 0.001  # between polls of the store in the latency stream: its resolution
SEND_BURST = 50  # the most XADDs between two polls (a few milliseconds' worth)
STORES = ("sqlite", "postgres")

Figures = dict[str, Any]
Notify = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """How much the ratings-in phase does, and where its PostgreSQL databases go."""

    postgres_url: str = DEFAULT_POSTGRES
    events: int = 200_000  # pre-loaded events per store for the ingest rate
    rate: float = 2000.0  # events/s of the latency stream
    latency_s: float = 10.0  # how long the latency stream runs
    repeats: int = 3  # of each snapshot and read_csv; the figure is the median
    timeout_s: float = 300.0  # for the ingest to drain the pre-loaded events, or one event to commit


class Databases:
    """Throw-away databases `bookrec_bench_<random>` on one PostgreSQL server, all dropped by `drop_all`."""

    def __init__(self, admin_url: str) -> None:
        self.url = database_url(admin_url)
        if self.url.get_backend_name() != "postgresql":
            raise ConfigError(f"--postgres {redact_url(admin_url)} is not a PostgreSQL URL (postgresql+psycopg://…)")
        self.admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []
        try:
            with self.admin.connect() as conn:
                self.server_version = conn.execute(sa.text("SHOW server_version")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            self.admin.dispose()
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise RatingsStoreError(
                f"PostgreSQL at {redact_url(admin_url)} does not answer ({reason}); the ratings-in benchmark makes "
                "its databases there: start it, or name another server with --postgres"
            ) from None
        if shutil.which("psql") is None:
            raise MissingDependency(
                "psql is not on PATH (apt-get install postgresql-client); the ratings-in benchmark times "
                "`psql \\copy` as a reference"
            )

    def create(self) -> str:
        """Make a new empty database; return its URL."""
        name = f"bookrec_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        """Drop every database `create` made (closing their connections) and let go of the server."""
        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.clear()
        self.admin.dispose()


class IngestProcess:
    """A real `bookrec ingest` of the benchmarked service writing into `database`, its output in `log`."""

    def __init__(self, service: Service, database: str, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bookrec", "ingest"],
                env=service.env(BOOKREC_DATABASE_URL=database),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def check(self) -> None:
        """BookrecError if the ingest has exited."""
        if self.process.poll() is not None:
            raise BookrecError(f"bookrec ingest exited with {self.process.returncode}; see {self.log}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM it (it stops after its batch), wait, kill it if it hangs; return its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def run(service: Service, data: Data, plan: Plan, databases: Databases, notify: Notify) -> tuple[Figures, Figures]:
    """Measure the five ratings-in figures; return (figures, references), keyed by figure."""
    with tempfile.TemporaryDirectory(prefix="bookrec-bench-") as tmp:
        fresh = {"sqlite": f"sqlite:///{Path(tmp) / 'ingest.db'}", "postgres": databases.create()}
        ingest = _ingest_figures(service, data, plan, fresh, notify)
        fresh = {"sqlite": f"sqlite:///{Path(tmp) / 'import.db'}", "postgres": databases.create()}
        bulk = _bulk_figures(service, data, plan, fresh, notify)
    return {**ingest[0], **bulk[0]}, {**ingest[1], **bulk[1]}


def _ingest_figures(
    service: Service, data: Data, plan: Plan, stores: dict[str, str], notify: Notify
) -> tuple[Figures, Figures]:
    """The two ingest rates and the latency, each store at its empty database URL in `stores`."""
    ingest = {store: _ingest(service, data, plan, stores[store], store, notify) for store in STORES}
    figures: Figures = {f"ingest_{store}_events_per_s": ingest[store]["events_per_s"] for store in STORES}
    references: Figures = {
        f"ingest_{store}_events_per_s": {
            k: ingest[store][k] for k in ("events_per_cpu_s", "xadd_events_per_s", "bare_rows_per_s", "events", "batch")
        }
        for store in STORES
    }
    figures["ingest_latency_ms"] = {store: ingest[store]["latency"] for store in STORES}
    seen = {store: ingest[store]["latency_reference"] for store in STORES}
    references["ingest_latency_ms"] = {
        "ping_p50_ms": median(seen[store]["ping_p50_ms"] for store in STORES),
        "xadd_p50_ms": median(seen[store]["xadd_p50_ms"] for store in STORES),
        "max_ms": {store: seen[store]["max_ms"] for store in STORES},
        "sent_per_s": {store: seen[store]["sent_per_s"] for store in STORES},
        "rate": plan.rate,
        "events": seen["postgres"]["events"],
    }
    return figures, references


def _bulk_figures(
    service: Service, data: Data, plan: Plan, stores: dict[str, str], notify: Notify
) -> tuple[Figures, Figures]:
    """The import into PostgreSQL (SQLite beside it), then snapshots of what was imported; empty stores in `stores`."""
    csv = data.data_dir / "ratings.csv"
    imported = {store: _import(service, csv, stores[store], store, notify) for store in STORES}
    figures: Figures = {"import_postgres_s": imported["postgres"]["wall_s"]}
    references: Figures = {
        "import_postgres_s": {
            "rows": imported["postgres"]["rows"],
            "command_s": imported["postgres"]["seconds"],
            "sqlite_s": imported["sqlite"]["wall_s"],
            **_psql_copies(stores["postgres"], csv),
        }
    }
    notify(f"snapshot: RatingsStore.snapshot().frame() of {imported['postgres']['rows']:,} ratings from each store")
    snapshots = {store: _snapshot(stores[store], plan.repeats) for store in STORES}
    figures["snapshot_s"] = {store: snapshots[store]["frame_s"] for store in STORES}
    references["snapshot_s"] = {
        "rows": snapshots["postgres"]["rows"],
        "snapshot_only_s": {store: snapshots[store]["snapshot_s"] for store in STORES},
        "read_csv_s": _read_csv_s(csv, plan.repeats),
    }
    return figures, references


def _ingest(service: Service, data: Data, plan: Plan, database: str, store: str, notify: Notify) -> dict[str, Any]:
    """Ingest rate and latency on one fresh store, with the bare load of the same rows as the rate's reference."""
    stream = service.keys.ratings_stream
    service.client.delete(stream, service.keys.ratings_dead)
    events = rating_events(data, plan.events, seed=0)
    notify(f"ingest into {store}: {plan.events:,} events pre-loaded, then one `bookrec ingest` process")
    xadd_rate, last_id = _preload(service.client, stream, events)
    ingest = IngestProcess(service, database, data.log(f"ingest-{store}"))
    try:
        seconds, cpu = _drain(service.client, stream, last_id, ingest, database, plan.timeout_s)
        _check_committed(database, last_id)
        notify(f"ingest latency into {store}: {plan.rate:,.0f} events/s for {plan.latency_s:g} s")
        latency = _latency(service.client, stream, data, database, ingest, plan)
    finally:
        code = ingest.stop()
    if code != 0:
        raise BookrecError(f"bookrec ingest into {store} exited with {code} on SIGTERM; see {ingest.log}")
    return {
        "events_per_s": plan.events / seconds,
        "events_per_cpu_s": plan.events / max(cpu, 1e-3),
        "xadd_events_per_s": xadd_rate,
        "bare_rows_per_s": _bare_load_rows_per_s(database, events),
        "events": plan.events,
        "batch": Settings().ingest_batch,
        **latency,
    }


def rating_events(data: Data, count: int, seed: int) -> list[dict[str, str]]:
    """`count` rating events (the stream's fields, as any producer XADDs them) by readers and of books of the
    catalogue, 1 to 5 stars."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, data.size.users + 1, count).tolist()
    books = rng.integers(1, data.size.books + 1, count).tolist()
    stars = rng.integers(1, 6, count).tolist()
    return [{"user_id": str(u), "book_id": str(b), "rating": str(r)} for u, b, r in zip(users, books, stars)]


def _preload(client: redis.Redis, stream: str, events: list[dict[str, str]]) -> tuple[float, str]:
    """XADD `events` in pipelines of PIPELINE; return the rate (events/s) and the last entry's id."""
    started = time.perf_counter()
    ids: list[Any] = []
    for first in range(0, len(events), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for fields in events[first : first + PIPELINE]:
            pipe.xadd(stream, fields)
        ids = pipe.execute()
    return len(events) / (time.perf_counter() - started), _text(ids[-1])


def _drain(
    client: redis.Redis, stream: str, last_id: str, ingest: IngestProcess, database: str, timeout: float
) -> tuple[float, float]:
    """Seconds from the ingest creating its group until the group has delivered `last_id` and holds none pending,
    and the CPU seconds the ingest process and its PostgreSQL server processes (if on this machine) used meanwhile."""
    deadline = time.perf_counter() + timeout
    while group_info(client, stream) is None:
        _wait(ingest, deadline, "create its consumer group", 0.001)
    pids = [ingest.process.pid, *_server_pids(database)]
    started, cpu = time.perf_counter(), sum(machine.cpu_seconds(pid) for pid in pids)
    while True:
        group = group_info(client, stream)
        if _text(group["last-delivered-id"]) == last_id and group["pending"] == 0:
            return time.perf_counter() - started, sum(machine.cpu_seconds(pid) for pid in pids) - cpu
        _wait(ingest, deadline, f"acknowledge every entry up to {last_id}", 0.005)


def _server_pids(database: str) -> list[int]:
    """The PostgreSQL server processes serving `database` that run on this machine (none for SQLite)."""
    url = database_url(database)
    if url.get_backend_name() != "postgresql":
        return []
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            pids = list(conn.execute(sa.text(query)).scalars())
    finally:
        engine.dispose()
    return [pid for pid in pids if _command(pid) == "postgres"]


def _command(pid: int) -> str:
    """The command name of process `pid` on this machine, empty if there is none."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _wait(ingest: IngestProcess, deadline: float, what: str, seconds: float) -> None:
    """Sleep `seconds`; BookrecError if the ingest died or `deadline` (perf_counter time) has passed."""
    ingest.check()
    if time.perf_counter() > deadline:
        raise BookrecError(f"bookrec ingest did not {what} in time; see {ingest.log}")
    time.sleep(seconds)


def _check_committed(database: str, last_id: str) -> None:
    """BookrecError unless the store has applied the stream up to `last_id`."""
    store = RatingsStore(database)
    try:
        applied = store.last_stream_id()
    finally:
        store.close()
    if applied != last_id:
        raise BookrecError(f"the ingest acknowledged up to {last_id} but the store has applied up to {applied}")


def _latency(
    client: redis.Redis, stream: str, data: Data, database: str, ingest: IngestProcess, plan: Plan
) -> dict[str, Any]:
    """XADD one event at a time at `plan.rate`/s (each a new reader's, so none is an old pair's update); each
    event's seconds from just before its XADD until a poll of the store shows it committed."""
    ping_ms = median(_round_trips(client, 1000)) * 1000
    count = max(1, int(plan.rate * plan.latency_s))
    events = [{**fields, "user_id": f"latency-{i}"} for i, fields in enumerate(rating_events(data, count, seed=1))]
    producer = _PacedProducer(client, stream, events, plan.rate)
    ms = np.array(_until_committed(producer, database, ingest, plan.timeout_s)) * 1000
    return {
        "latency": {"p50": percentile(ms, 50), "p99": percentile(ms, 99)},
        "latency_reference": {
            "ping_p50_ms": ping_ms,
            "xadd_p50_ms": median(producer.xadds) * 1000,
            "max_ms": float(ms.max()),
            "sent_per_s": producer.sent_per_s(),
            "events": count,
        },
    }


class _PacedProducer:
    """XADDs `events` one at a time at `rate`/s, remembering when each was sent, until each is seen committed."""

    def __init__(self, client: redis.Redis, stream: str, events: list[dict[str, str]], rate: float) -> None:
        self.client, self.stream, self.events, self.rate = client, stream, events, rate
        self.waiting: deque[tuple[tuple[int, int], float]] = deque()  # (stream id, perf_counter before its XADD)
        self.xadds: list[float] = []  # each XADD's round trip, seconds
        self.sent = 0
        self.start = self.last_sent = time.perf_counter()

    def busy(self) -> bool:
        """Whether events remain to send, or sent ones to see committed."""
        return self.sent < len(self.events) or bool(self.waiting)

    def send_due(self) -> None:
        """Send the events due by now, at most SEND_BURST: one that fell behind catches up between polls."""
        due = min(len(self.events), self.sent + SEND_BURST)
        while self.sent < due and time.perf_counter() >= self.start + self.sent / self.rate:
            before = time.perf_counter()
            entry = self.client.xadd(self.stream, self.events[self.sent])
            self.xadds.append(time.perf_counter() - before)
            self.waiting.append((stream_id_key(_text(entry)), before))
            self.sent, self.last_sent = self.sent + 1, before

    def committed(self, applied: str | None, seen: float) -> list[float]:
        """Latencies (s) of the waiting events the store's last applied stream id `applied`, read at `seen`, covers."""
        done = []
        while self.waiting and applied is not None and self.waiting[0][0] <= stream_id_key(applied):
            done.append(seen - self.waiting.popleft()[1])
        return done

    def idle_for(self, now: float) -> float:
        """Seconds until the next event is due (0 if one is due or overdue; POLL_S once all are sent)."""
        if self.sent >= len(self.events):
            return POLL_S
        return max(0.0, self.start + self.sent / self.rate - now)

    def oldest_wait(self, now: float) -> float:
        """Seconds the oldest event not yet seen committed has waited."""
        return now - self.waiting[0][1] if self.waiting else 0.0

    def sent_per_s(self) -> float:
        """The rate the events really went out at (below `rate` if this process fell behind)."""
        return (self.sent - 1) / max(self.last_sent - self.start, 1e-6)


def _until_committed(producer: _PacedProducer, database: str, ingest: IngestProcess, timeout: float) -> list[float]:
    """Run `producer`, polling the store after each send (at least every POLL_S), until every event is seen
    committed; their latencies (s). A poll is one short transaction reading stream_state's row on one connection
    held open, as light as a reader can make it: the benchmark must not take the CPU the ingest needs."""
    query = sa.select(stream_state.c.last_stream_id).where(stream_state.c.stream == RATINGS_STREAM)
    engine = RatingsStore(database).engine
    latencies: list[float] = []
    try:
        with engine.connect() as conn:
            while producer.busy():
                producer.send_due()
                with conn.begin():
                    applied = conn.execute(query).scalar()
                latencies += producer.committed(applied, time.perf_counter())
                if producer.oldest_wait(time.perf_counter()) > timeout:
                    raise BookrecError(f"a rating event was not committed within {timeout:.0f} s; see {ingest.log}")
                ingest.check()
                time.sleep(min(POLL_S, producer.idle_for(time.perf_counter())))
    finally:
        engine.dispose()
    return latencies


def _round_trips(client: redis.Redis, count: int) -> list[float]:
    """Seconds of each of `count` Redis PINGs."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - started)
    return times


def _bare_load_rows_per_s(database: str, events: list[dict[str, str]]) -> float:
    """Rows/s of loading the events' rows (user_id, book_id, rating, ts, updated_at) into a bare table of the same
    columns, no key and no index, in one transaction: COPY on PostgreSQL, executemany INSERT on SQLite."""
    now = time.time()
    rows = [(e["user_id"], e["book_id"], float(e["rating"]), now, now) for e in events]
    engine = RatingsStore(database).engine
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE bench_bare (user_id varchar(64), book_id varchar(64), rating double precision, "
                "ts double precision, updated_at double precision)"
            )
        started = time.perf_counter()
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            if engine.dialect.name == "postgresql":
                with cursor.copy("COPY bench_bare FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany("INSERT INTO bench_bare VALUES (?, ?, ?, ?, ?)", rows)
        seconds = time.perf_counter() - started
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE bench_bare")
    finally:
        engine.dispose()
    return len(rows) / seconds


def _import(service: Service, path: Path, database: str, store: str, notify: Notify) -> dict[str, Any]:
    """`bookrec data import` of the ratings CSV at `path` into `database`, a subprocess: its wall time and JSON."""
    notify(f"bulk import into {store}: `bookrec data import {path}`")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bookrec", "data", "import", str(path), "--database", database, "--json"],
        env=service.env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BookrecError(f"bookrec data import into {store} exited with {done.returncode}: {done.stderr.strip()}")
    return {"wall_s": wall, **json.loads(done.stdout)}


def _psql_copies(database: str, path: Path) -> dict[str, float]:
    """Seconds of `psql \\copy` of the ratings CSV into a bare table and into one keyed like ratings."""
    tables = {
        "psql_copy_s": "user_id varchar(64), book_id varchar(64), rating double precision",
        "psql_copy_keyed_s": "user_id varchar(64), book_id varchar(64), rating double precision, "
        "PRIMARY KEY (user_id, book_id)",
    }
    url = database_url(database)
    env = {"PGPASSWORD": url.password or ""}
    target = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    quoted = str(path).replace("'", "''")
    seconds = {}
    for key, columns in tables.items():
        table = f"bench_{key}"
        _psql(target, env, f"CREATE TABLE {table} ({columns})")
        started = time.perf_counter()
        _psql(target, env, f"\\copy {table} (user_id, book_id, rating) FROM '{quoted}' WITH (FORMAT csv, HEADER)")
        seconds[key] = time.perf_counter() - started
        _psql(target, env, f"DROP TABLE {table}")
    return seconds


def _psql(target: str, env: dict[str, str], command: str) -> None:
    """Run one psql command on `target` (a libpq URL without its password, which goes in `env`)."""
    done = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target, "-c", command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BookrecError(f"psql {command.split()[0]} failed: {done.stderr.strip()}")


def _snapshot(database: str, repeats: int) -> dict[str, Any]:
    """Median seconds of `snapshot()` and of `snapshot().frame()` (a retrain's read) of the store at `database`."""
    store = RatingsStore(database)
    snapshot_s, frame_s = [], []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            snap = store.snapshot()
            snapshot_s.append(time.perf_counter() - started)
            snap.frame()
            frame_s.append(time.perf_counter() - started)
            rows = snap.summary["rows"]
            del snap
    finally:
        store.close()
    return {"snapshot_s": median(snapshot_s), "frame_s": median(frame_s), "rows": rows}


def _read_csv_s(path: Path, repeats: int) -> float:
    """Median seconds of pandas.read_csv of `path`."""
    import pandas as pd

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        pd.read_csv(path)
        times.append(time.perf_counter() - started)
    return median(times)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
