"""`bookrec demo` (what `make demo` runs): the whole service end to end on synthetic readers of real books.

Redis: BOOKREC_REDIS_URL if it answers, else a `redis-server` started under ./var/demo, else an
embedded in-process fake Redis served over TCP (so worker processes can still connect); it says which.
Everything runs under its own key prefix, `demo:` (its keys and its queues, `demo:recommend`...), so a
deployment on the same Redis is never touched; the demo refuses to start if `demo:` keys exist that it
did not write. Then: synthesise readers of goodbooks-10k's books, train, start 2 worker processes, a
trainer and the dashboard (printing its URL and the Prometheus metrics URLs once they answer), request recommendations and print them from the cache with titles, rate books through the stream
(a real `bookrec ingest`), show a reader's list change as soon as they rate, retrain, show the hot swap,
stop everything cleanly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import redis

from bookrec.commands.common import needs_worker_side, table
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import Keys
from bookrec.shared.settings import redact_url
from bookrec.shared.worker_state import read_all as worker_states
from bookrec.worker.serve.launch import ChildProcess, IngestProcess, WorkerProcesses

DEMO_ROOT = Path("var/demo")
DEMO_USERS = ["1", "2", "3", "no-such-reader"]
RATER = "2"
"""The reader who rates the first books of a series in step 7 and sees their list change."""
SERIES_RATED = 3
"""How many books of that series they rate (its first ones, 5 stars each)."""
DEMO_DB = "bookrec.db"
"""The demo's ratings store: a SQLite file under DEMO_ROOT."""
DEMO_PREFIX = "demo:"
DEMO_KEYS = Keys(DEMO_PREFIX)
MARK_KEY = f"{DEMO_PREFIX}written-by"
MARK = "bookrec demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole service end to end on synthetic readers of real books",
        description="Synthesise 2,000 readers of goodbooks-10k's 1,000 most-rated books, train the default model, "
        "start 2 worker processes, a trainer and an ingest, request recommendations and print them from the cache, "
        "rate books through the ratings stream and show a reader's list change at once, retrain and show the hot "
        "swap, then stop everything. Uses BOOKREC_REDIS_URL if it answers, else starts redis-server under "
        "./var/demo, else an embedded fake Redis.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep ./var/demo from an earlier run instead of starting afresh"
    )
    parser.set_defaults(handler=run)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, ValueError):
        return False


@contextmanager
def _redis() -> Iterator[str]:
    """Yield a Redis URL: the configured one, a private redis-server, or an embedded fake; clean up after."""
    url = os.environ.get("BOOKREC_REDIS_URL", "redis://localhost:6379/0")
    if _answers(url):
        print(f"Redis: using BOOKREC_REDIS_URL ({redact_url(url)})")
        yield url
        return
    port = _free_port()
    if shutil.which("redis-server"):
        workdir = (DEMO_ROOT / "redis").resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _answers(url) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.05)
        print(f"Redis: BOOKREC_REDIS_URL did not answer; started redis-server on port {port} under {workdir}")
        try:
            yield url
        finally:
            server.terminate()
            server.wait()
        return
    import threading

    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"Redis: no Redis and no redis-server binary; using an embedded fake Redis on port {port} (in this process)")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


def claim_prefix(client: redis.Redis) -> None:
    """Empty the demo's key prefix for a fresh run and mark it as the demo's; BookrecError if other keys use it.

    Keys under `demo:` that carry no demo mark belong to something else (a deployment that chose that
    prefix), so they are left alone and the demo stops with a message instead.
    """
    found = list(client.scan_iter(match=f"{DEMO_PREFIX}*", count=1000))
    if found and client.get(MARK_KEY) is None:
        raise BookrecError(
            f"Redis at {_where(client)} holds {len(found)} key(s) under {DEMO_PREFIX!r} that the demo did not write "
            f"(e.g. {found[0].decode()!r}); the demo leaves them alone: point BOOKREC_REDIS_URL at another database"
        )
    if found:
        client.delete(*found)
    client.set(MARK_KEY, MARK)


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _bookrec(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bookrec.cli", *args], env=env, check=True, **kwargs)


def _workers(env: dict[str, str], queues: str, processes: int, log: Path) -> WorkerProcesses:
    log.unlink(missing_ok=True)
    return WorkerProcesses(env, queues, processes, log)


def _dashboard(env: dict[str, str], port: int) -> ChildProcess:
    """Start `bookrec dashboard` on 127.0.0.1:`port` and print its URL once it answers (or why it did not)."""
    dashboard = ChildProcess(
        [sys.executable, "-m", "bookrec", "dashboard", "--host", "127.0.0.1", "--port", str(port)],
        env,
        DEMO_ROOT / "dashboard.log",
    )
    url = f"http://127.0.0.1:{port}/"
    if _answered(f"{url}healthz", dashboard):
        mode = "actions take BOOKREC_DASHBOARD_TOKEN" if env.get("BOOKREC_DASHBOARD_TOKEN") else "read-only"
        print(f"dashboard: {url} ({mode}; a reader's page: {url}reader?user=1)")
    else:
        print(f"dashboard did not start (see {DEMO_ROOT}/dashboard.log); the demo goes on without it")
    return dashboard


def _say_metrics(name: str, port: int) -> None:
    """Print the Prometheus metrics URL of the demo's `name` process(es) once it answers with bookrec's series."""
    url = f"http://127.0.0.1:{port}/metrics"
    if _answered(url, None, must_hold=b"bookrec_"):
        print(f"metrics of the {name}: {url}")
    else:
        print(f"the {name} serve no metrics on {url} (see {DEMO_ROOT}/*.log)")


def _answered(url: str, process: ChildProcess | None, must_hold: bytes = b"", timeout: float = 30) -> bool:
    """Whether `url` answers 200 (with `must_hold` in its body) within `timeout` s, while `process` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.exit_code() is None):
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200 and must_hold in reply.read():
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _wait_for_version(client: redis.Redis, version: str, count: int, timeout: float = 120) -> float:
    """Seconds until `count` serving workers report `version`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sum(1 for s in worker_states(client, DEMO_KEYS) if s.get("version") == version) >= count:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"workers did not load {version} within {timeout} s (see {DEMO_ROOT}/workers.log)")


def _wait_for_ingest(client: redis.Redis, ingest: IngestProcess, timeout: float = 60) -> None:
    """Return once the ingest has migrated the store and joined its consumer group on the ratings stream."""
    from bookrec.ingest.consumer import GROUP

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ingest.exit_code() is None:
        try:
            if any(g["name"].decode() == GROUP for g in client.xinfo_groups(DEMO_KEYS.ratings_stream)):
                return
        except redis.exceptions.ResponseError:  # no stream yet
            pass
        time.sleep(0.05)
    raise BookrecError(f"the ingest did not start within {timeout:.0f} s (see {DEMO_ROOT}/ingest.log)")


def _rate_through_the_stream(client, env: dict[str, str], timeout: float = 60) -> None:
    """Rate reader 1's top three books, take one rating back and send one bad event; wait until the ingest has
    committed them and dead-lettered the bad one, then show the store's rows and the dead stream."""
    import sqlalchemy as sa

    from bookrec.ratings.schema import books as book_rows
    from bookrec.ratings.schema import ratings
    from bookrec.ratings.store import RatingsStore

    books = [str(item["book_id"]) for item in client.get("1").entry["items"][:3]]
    sent = time.monotonic()
    ids = client.rate_many([{"user_id": "1", "book_id": b, "rating": r} for b, r in zip(books, (5, 4, 2))])
    ids.append(client.unrate("1", books[2]))
    client.redis.xadd(DEMO_KEYS.ratings_stream, {"user_id": "1", "book_id": books[0], "rating": "9"})  # off the scale
    print(f"sent 3 ratings and 1 delete of reader 1 (stream ids {ids[0]} … {ids[-1]}) and 1 bad event (rating 9)")
    store = RatingsStore(env["BOOKREC_DATABASE_URL"])
    try:
        while store.last_stream_id() != ids[-1] or not client.redis.xlen(DEMO_KEYS.ratings_dead):
            if time.monotonic() - sent > timeout:
                raise BookrecError(
                    f"the ingest did not commit the demo's ratings within {timeout:.0f} s (see {DEMO_ROOT}/ingest.log)"
                )
            time.sleep(0.01)
        print(f"committed to the ratings store {1000 * (time.monotonic() - sent):.0f} ms after the first XADD")
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ratings.c.book_id, book_rows.c.title, ratings.c.rating)
                .outerjoin(book_rows, book_rows.c.book_id == ratings.c.book_id)
                .where(ratings.c.user_id == "1", ratings.c.book_id.in_(books))
                .order_by(ratings.c.book_id)
            ).all()
    finally:
        store.close()
    print(
        table(
            ["book", "title", "rating (empty: deleted)"],
            [[r.book_id, _short(r.title or ""), "" if r.rating is None else f"{r.rating:g}"] for r in rows],
        )
    )
    print("the dead stream keeps the bad event with its reason (`bookrec ingest dead`):")
    _bookrec("ingest", "dead", env=env)


def _print_lists(entries: list[dict | None], data: Path) -> None:
    """Each reader's cached list with titles and authors, under the books they rated highest."""
    import pandas as pd

    from bookrec.worker.learn.datasets import read_books

    ratings = pd.read_csv(data / "ratings.csv", dtype={"user_id": str, "book_id": str})
    books = read_books(data / "books.csv")
    for entry in entries:
        if entry is None:
            continue
        note = " (new reader: most popular books)" if entry["fallback"] else ""
        print(f"\nuser {entry['user_id']}{note}, model {entry['model_version']}:")
        mine = ratings[ratings["user_id"] == str(entry["user_id"])].sort_values(
            "rating", ascending=False, kind="stable"
        )
        if len(mine):
            liked = [f"{_short(books.loc[b, 'title'])} ({r:g}*)" for b, r in zip(mine["book_id"][:4], mine["rating"])]
            print(f"rated {len(mine)} books, among them: {'; '.join(liked)}")
        print(_list_table(entry))


def _list_table(entry: dict) -> str:
    rows = [
        [str(i + 1), _short(item["title"] or str(item["book_id"])), (item["authors"] or "")[:30]]
        for i, item in enumerate(entry["items"])
    ]
    return table(["#", "title", "authors"], rows)


def _short(title: str, width: int = 60) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def _series_to_rate(data: Path, rated: set[str], listed: set[str]) -> tuple[str, list[str]]:
    """(name, first SERIES_RATED book ids) of the first series in the catalogue's order (goodbooks': most rated
    first) with at least SERIES_RATED + 2 books there, none of them rated by the reader or in their list."""
    from bookrec.worker.learn.book_traits import traits
    from bookrec.worker.learn.datasets import read_book_table

    catalogue = read_book_table(data / "books.csv")
    placed = traits(catalogue).assign(book_id=catalogue["book_id"]).dropna(subset=["series"])
    for name, books in placed.groupby("series", sort=False):
        ids = set(books["book_id"])
        if len(books) >= SERIES_RATED + 2 and not ids & (rated | listed):
            return str(name), books.sort_values("number", kind="stable")["book_id"][:SERIES_RATED].tolist()
    raise BookrecError(f"no series in {data / 'books.csv'} has {SERIES_RATED + 2} books the reader has not met")


def _rate_a_series(client, env: dict[str, str], data: Path) -> None:
    """Reader RATER rates the first books of a series they never met, through `bookrec rate … --wait`, and their
    list changes as soon as the ingest and a worker have taken the ratings: show what came in."""
    import pandas as pd

    ratings = pd.read_csv(data / "ratings.csv", dtype={"user_id": str, "book_id": str})
    before = client.get(RATER).entry
    listed = {str(item["book_id"]) for item in before["items"]}
    name, books = _series_to_rate(data, set(ratings.loc[ratings["user_id"] == RATER, "book_id"]), listed)
    titles = {str(item["book_id"]): item["title"] for item in before["items"]}
    print(f"reader {RATER}'s list now:\n{_list_table(before)}")
    print(f"\nreader {RATER} has read nothing of the series {name!r}; they rate its first {len(books)} books 5 stars:")
    for i, book in enumerate(books):
        wait = ["--wait", "-n", "10"] if i == len(books) - 1 else []
        print(f"$ bookrec rate {RATER} {book} 5 {' '.join(wait)}".rstrip(), flush=True)
        _bookrec("rate", RATER, book, "5", *wait, env=env)
    after = client.get(RATER).entry
    came = [item for item in after["items"] if str(item["book_id"]) not in listed]
    left = [titles[b] or b for b in listed - {str(item["book_id"]) for item in after["items"]}]
    print(
        f"\nthe list changed as soon as the ratings were ingested: {len(came)} new books "
        f"({', '.join(_short(i['title'] or str(i['book_id']), 45) for i in came) or 'none'}); "
        f"{len(left)} left it ({', '.join(_short(t, 45) for t in left) or 'none'})"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 only if every step worked and no job failed."""
    needs_worker_side("bookrec demo")
    import json

    from bookrec.model_store.store import ModelStore
    from bookrec.producer.client import Client
    from bookrec.shared.settings import Settings

    if not args.keep and DEMO_ROOT.exists():
        shutil.rmtree(DEMO_ROOT / "data", ignore_errors=True)
        shutil.rmtree(DEMO_ROOT / "models", ignore_errors=True)
        for part in ("", "-wal", "-shm"):
            (DEMO_ROOT / f"{DEMO_DB}{part}").unlink(missing_ok=True)
    DEMO_ROOT.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = stack.enter_context(_redis())
        env = {
            **os.environ,
            "BOOKREC_REDIS_URL": url,
            "BOOKREC_MODEL_STORE": str((DEMO_ROOT / "models").resolve()),
            "BOOKREC_DATA_DIR": str((DEMO_ROOT / "data").resolve()),
            "BOOKREC_DATABASE_URL": f"sqlite:///{(DEMO_ROOT / DEMO_DB).resolve()}",
            "BOOKREC_KEY_PREFIX": DEMO_PREFIX,
            "BOOKREC_LOG_LEVEL": "WARNING",
        }
        settings = Settings.from_env(env)
        client = Client(settings=settings)
        claim_prefix(client.redis)
        print(f"keys and queues under the prefix {DEMO_PREFIX!r}: nothing outside it is read or written")

        _step(
            "1. synthesise 60,000 ratings by 2,000 readers of the 1,000 most-rated real books of goodbooks-10k "
            "(shipped with bookrec; Zygmunt Zając, CC BY-SA 4.0): readers follow authors, series, eras, languages"
        )
        _bookrec("data", "synth", "--preset", "small", "--out", env["BOOKREC_DATA_DIR"], env=env)

        data = Path(env["BOOKREC_DATA_DIR"])
        _step("2. import the ratings and books into the ratings store (SQLite, WAL mode)")
        _bookrec("db", "upgrade", env=env)
        _bookrec("data", "import", str(data / "ratings.csv"), env=env)
        _bookrec("data", "import-books", str(data / "books.csv"), env=env)

        _step("3. train the default ranking model on the store's snapshot and promote it")
        _bookrec("train", "--books", str(data / "books.csv"), "--promote", env=env)
        first = client.redis.get(DEMO_KEYS.model_current).decode()

        _step("4. start 2 worker processes (recommend, fresh, refresh), a trainer (retrain) and the dashboard")
        queues = "recommend,fresh,refresh"
        ports = {name: _free_port() for name in ("workers", "trainer", "ingest", "dashboard")}
        workers = _workers(
            {**env, "BOOKREC_TF_THREADS": "1", "BOOKREC_METRICS_PORT": str(ports["workers"])},
            queues,
            2,
            DEMO_ROOT / "workers.log",
        )
        trainer = _workers(
            {**env, "BOOKREC_TF_THREADS": "0", "BOOKREC_METRICS_PORT": str(ports["trainer"])},
            "retrain",
            1,
            DEMO_ROOT / "trainer.log",
        )
        stack.callback(_stop, [workers, trainer])
        print(f"workers ready in {_wait_for_version(client.redis, first, 2):.1f} s with model {first}")
        dashboard = _dashboard(env, ports["dashboard"])
        stack.callback(dashboard.stop)
        for name in ("workers", "trainer"):
            _say_metrics(name, ports[name])

        _step(f"5. request recommendations for users {', '.join(DEMO_USERS)} and read them back from the cache")
        client.recommend(DEMO_USERS, n=10, wait=True, timeout=60)
        raw = client.redis.get(DEMO_KEYS.recs("1"))
        print(f"plain GET {DEMO_KEYS.recs('1')} -> {len(raw)} bytes of JSON: {raw[:120].decode()}...")
        _print_lists([client.get(u).entry for u in DEMO_USERS], data)

        _step("6. rate books through the stream: a `bookrec ingest` process commits them to the ratings store")
        ingest = IngestProcess({**env, "BOOKREC_INGEST_METRICS_PORT": str(ports["ingest"])}, DEMO_ROOT / "ingest.log")
        stack.callback(ingest.stop)
        _wait_for_ingest(client.redis, ingest)
        _say_metrics("ingest", ports["ingest"])
        _rate_through_the_stream(client, env)

        _step(f"7. reader {RATER} rates books and their list changes at once (fresh lists, no retrain)")
        _rate_a_series(client, env, data)

        _step(
            "8. retrain on the store (forced past the gate so the swap always shows) while recommend jobs keep flowing"
        )
        job = client.retrain(force=True)  # no ratings file: one snapshot of the ratings store
        served = 0
        while job.get_status(refresh=True).value not in ("finished", "failed"):
            client.recommend([str(1 + served % 50)], n=10, wait=True, timeout=60)
            served += 1
        result = client.wait([job], timeout=600)[0]
        second = result["version"]
        swap_s = _wait_for_version(client.redis, second, 2)
        print(f"candidate {second}: {result['decision']['reason']}")
        snapshot = ModelStore(Path(env["BOOKREC_MODEL_STORE"])).metadata(second)["snapshot"]
        print(
            f"it learned from one snapshot of the ratings store: {snapshot['rows']:,} ratings of {snapshot['users']:,} "
            f"readers, through stream id {snapshot['last_stream_id']}"
        )
        print(
            f"every worker serves {second} {swap_s:.1f} s after the retrain finished; {served} recommend jobs ran meanwhile"
        )
        after = client.recommend(["1"], n=10, wait=True, timeout=60)[0]
        print(f"model version before: {first}\nmodel version after:  {after['model_version']}")

        status = client.status()
        print(f"failed jobs: {status['failed_jobs']}; cached lists: {status['cache_entries']}")
        print(
            json.dumps(
                {"workers": [{"name": w["name"], "model_version": w["model_version"]} for w in status["workers"]]},
                indent=1,
            )
        )

        _step("9. stop the workers, the ingest and the dashboard (SIGTERM: each finishes its current job)")
        codes = _stop([workers, trainer]) + [ingest.stop()]
        dashboard.stop()
        print(f"workers stopped with exit codes {codes}")
        ok = status["failed_jobs"] == 0 and after["model_version"] == second and all(c == 0 for c in codes)
        print("\ndemo finished: " + ("OK" if ok else "something went wrong (see var/demo/*.log)"))
        return 0 if ok else 1


def _stop(pools: list[WorkerProcesses]) -> list[int]:
    return [pool.stop(timeout=60) for pool in pools]
