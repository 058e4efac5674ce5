"""Retrains and `bookrec train` on the ratings store (a SQLite file in tmp_path; Redis is fakeredis): one snapshot
trained on and recorded in the version's metadata, no new ratings in an unchanged store, a new rating trains, an
empty, unreadable or broken store fails clearly, and `bookrec init` fills an empty store from the data dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fakeredis
import pytest
import sqlalchemy as sa

import bookrec.producer.client
from bookrec.commands import init as init_command
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.schema import ratings as ratings_table
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import DataError, JobFailed, RatingsStoreError
from bookrec.shared.keys import QUEUE_RETRAIN, Keys
from bookrec.shared.ratings import RatingEvent
from bookrec.shared.settings import Settings
from bookrec.worker.learn.datasets import read_ratings, rows_sha256
from bookrec.worker.learn.inputs import GOODBOOKS_BOOKS
from bookrec.worker.serve import context
from bookrec.worker.serve.context import WorkerContext
from bookrec.worker.serve.retrain import run_retrain
from bookrec.worker.serve.rq_worker import BookrecWorker
from bookrec.worker.serve.store_ratings import read_store
from tests.conftest import TrainedStore, synth_small
from tests.unit.conftest import run_cli
from tests.unit.test_ratings_store import store  # noqa: F401  (the fixture: a migrated SQLite store in tmp_path)

KEYS = Keys()
DAE = {"steps": 30}
STREAMED = "1764590400000-0"
"""The stream id of the one rating the filled store got from the stream (the rest were imported)."""
EMPTY_HINT = "holds no ratings; fill it with `bookrec data import ratings.csv`"


@pytest.fixture
def filled(store: RatingsStore, trained: TrainedStore) -> RatingsStore:  # noqa: F811
    """`store` holding the session catalogue's ratings.csv (imported) and one rating applied from the stream."""
    store.import_ratings(read_ratings(trained.data_dir / "ratings.csv").frame)
    store.apply([RatingEvent("streamed-reader", "1", 4.0, 1764590400.0, stream_id=STREAMED)])
    return store


def trainer_context(fresh_store: TrainedStore, url: str, redis: fakeredis.FakeRedis | None = None) -> WorkerContext:
    """A trainer's context on fakeredis: production is the session's file-trained version, the ratings store `url`."""
    models = ModelStore(fresh_store.store)
    models.set_production(fresh_store.version)
    settings = Settings(model_store=fresh_store.store, data_dir=fresh_store.data_dir, database_url=url)
    return WorkerContext(settings, redis or fakeredis.FakeRedis(), KEYS, models, None)


def installed_trainer(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> Client:
    """Install `ctx` as this process's worker context; a Client on its Redis, enqueueing for a BookrecWorker."""
    monkeypatch.setattr(context, "_context", None)
    context.install(ctx)
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: ctx.client)
    return Client(settings=ctx.settings)


def retrain_on_store(ctx: WorkerContext, force: bool = False) -> dict:
    """The retrain job's body with no ratings file: one snapshot of the context's ratings store."""
    return run_retrain(ctx, None, "mult-dae", DAE, None, None, force, seed=0)


def test_a_retrain_job_naming_no_file_trains_on_one_snapshot_of_the_store_and_records_it(
    fresh_store: TrainedStore, filled: RatingsStore, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = trainer_context(fresh_store, filled.url, redis)
    client = installed_trainer(ctx, monkeypatch)
    job = client.retrain(params=DAE, force=True)

    BookrecWorker([QUEUE_RETRAIN], connection=redis).work(burst=True, with_scheduler=False)

    assert job.kwargs["ratings"] is None, "the client's default is the ratings store"
    result = client.wait([job], timeout=5)[0]
    metadata = ctx.store.metadata(result["version"])
    snapshot = filled.snapshot()
    assert metadata["snapshot"] == {"source": "store", "url": filled.url, **snapshot.summary}
    assert metadata["snapshot"]["last_stream_id"] == STREAMED and metadata["snapshot"]["rows"] == 6001
    assert isinstance(metadata["snapshot"]["newest_updated_at"], float)
    recorded = metadata["data_fingerprint"]["ratings"]
    assert (recorded["path"], recorded["store"], recorded["bytes"]) == (None, filled.url, None)
    assert recorded["rows"] == 6001 and recorded["sha256"] == rows_sha256(snapshot.frame())
    assert "streamed-reader" in metadata["id_maps"]["users"]
    assert ctx.store.metadata(fresh_store.version)["snapshot"] is None, "a file-trained version has none"


def test_an_unchanged_store_trains_nothing_and_a_new_rating_trains(
    fresh_store: TrainedStore, filled: RatingsStore
) -> None:
    ctx = trainer_context(fresh_store, filled.url)
    first = retrain_on_store(ctx, force=True)  # production was trained on the file: from now on, on the store
    versions = ctx.store.list()

    unchanged = retrain_on_store(ctx)

    assert unchanged["version"] is None and unchanged["decision"]["no_new_ratings"] is True
    assert unchanged["decision"]["reason"].startswith(
        f"no new ratings since production {first['version']}: the ratings store holds the ratings it was trained on"
    )
    assert ctx.store.list() == versions

    filled.apply([RatingEvent("42", "7", 5.0, 1764600000.0, stream_id="1764600000000-0")])
    newer = retrain_on_store(ctx)

    assert newer["version"] is not None and newer["decision"]["no_new_ratings"] is False
    before, after = (ctx.store.metadata(r["version"])["snapshot"] for r in (first, newer))
    assert after["rows"] == before["rows"] + 1 and after["last_stream_id"] == "1764600000000-0"
    assert after["newest_updated_at"] > before["newest_updated_at"]


def test_an_empty_store_fails_the_retrain_naming_it_and_how_to_fill_it(
    fresh_store: TrainedStore,
    store: RatingsStore,  # noqa: F811
) -> None:
    ctx = trainer_context(fresh_store, store.url)
    versions = ctx.store.list()

    with pytest.raises(DataError) as failed:
        retrain_on_store(ctx, force=True)

    assert str(failed.value).startswith(f"the ratings store {store.url} {EMPTY_HINT}")
    assert "bookrec ingest" in str(failed.value)
    assert ctx.store.list() == versions and ctx.client.get(KEYS.retrain_lock) is None


def test_a_sqlite_store_that_does_not_exist_fails_the_retrain_and_is_not_created(
    fresh_store: TrainedStore, tmp_path: Path
) -> None:
    absent = tmp_path / "never-made.db"
    ctx = trainer_context(fresh_store, f"sqlite:///{absent}")

    with pytest.raises(DataError) as failed:
        retrain_on_store(ctx)

    assert f"does not exist ({absent}); create and fill it with `bookrec init`" in str(failed.value)
    assert not absent.exists() and ctx.client.get(KEYS.retrain_lock) is None


def test_a_store_that_cannot_be_read_is_a_ratings_store_error(fresh_store: TrainedStore, tmp_path: Path) -> None:
    ctx = trainer_context(fresh_store, f"sqlite:///{tmp_path}")  # a directory: SQLite cannot open it

    with pytest.raises(RatingsStoreError, match=f"ratings store at sqlite:///{tmp_path} failed: unable to open"):
        retrain_on_store(ctx, force=True)

    assert ctx.client.get(KEYS.retrain_lock) is None


def test_a_store_row_that_is_not_a_rating_is_refused_as_a_file_row_would_be(filled: RatingsStore) -> None:
    with filled.engine.begin() as conn:  # written behind the store's back: its own writers refuse non-finite ratings
        conn.execute(sa.insert(ratings_table).values(user_id="0", book_id="b", rating=float("inf"), ts=1, updated_at=1))

    with pytest.raises(DataError) as refused:
        read_store(filled.url)

    assert str(refused.value) == (
        f"ratings store {filled.url}: 1 row has a missing or non-numeric rating in column 'rating' "
        "(first at row 1: 'inf'); fix or remove those rows"
    )


def test_a_retrain_job_from_redis_naming_no_file_fails_on_an_empty_store(
    fresh_store: TrainedStore,
    store: RatingsStore,  # noqa: F811
    redis: fakeredis.FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = installed_trainer(trainer_context(fresh_store, store.url, redis), monkeypatch)
    job = client.retrain(params=DAE)

    BookrecWorker([QUEUE_RETRAIN], connection=redis).work(burst=True, with_scheduler=False)

    with pytest.raises(JobFailed, match=f"DataError: the ratings store {store.url} holds no ratings"):
        client.wait([job], timeout=5)
    assert redis.get(KEYS.retrain_lock) is None


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    """`bookrec` commands run in this process on a model store in tmp_path; the ratings store is each test's."""
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(tmp_path / "models"))
    return ModelStore(tmp_path / "models")


def test_train_without_ratings_trains_on_the_store_and_models_show_and_list_say_so(
    filled: RatingsStore, cli_env: ModelStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("BOOKREC_DATABASE_URL", filled.url)

    code, out, err = run_cli(["train", "--model", "mf", "--epochs", "1", "--json"], capsys)

    assert code == 0, err
    version = json.loads(out)["version"]
    assert cli_env.metadata(version)["snapshot"] == {"source": "store", "url": filled.url, **filled.snapshot().summary}
    code, out, err = run_cli(["models", "show", version], capsys)
    assert code == 0, err
    [line] = [line for line in out.splitlines() if line.startswith("snapshot")]
    assert line.startswith(f"snapshot    store {filled.url}: 6,001 rows, 301 users, 200 items; newest updated_at 20")
    assert line.endswith(f" UTC; last stream id {STREAMED}")
    assert f"ratings  {filled.url}" in out, "the data table names the store where a file's path would be"
    code, out, err = run_cli(["models", "list"], capsys)
    assert out.splitlines()[2].split()[4:8] == ["store", "6,001", "301", "200"]


def test_train_without_ratings_on_an_empty_store_is_one_line_and_exit_2(
    store: RatingsStore,  # noqa: F811
    cli_env: ModelStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("BOOKREC_DATABASE_URL", store.url)

    code, out, err = run_cli(["train", "--model", "mf", "--epochs", "1"], capsys)

    assert code == 2 and err.startswith(f"bookrec: error: the ratings store {store.url} {EMPTY_HINT}")
    assert len(err.splitlines()) == 1 and cli_env.list() == []


def test_init_fills_an_empty_store_from_the_data_dir_and_trains_the_first_model_on_it(
    tmp_path: Path, cli_env: ModelStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = synth_small(tmp_path / "data", users=60, books=40, ratings=600)
    url = f"sqlite:///{tmp_path / 'ratings.db'}"
    monkeypatch.setenv("BOOKREC_DATA_DIR", str(data))
    monkeypatch.setenv("BOOKREC_DATABASE_URL", url)
    server = fakeredis.FakeServer()
    monkeypatch.setattr(init_command, "redis_client", lambda settings: fakeredis.FakeRedis(server=server))

    code, out, err = run_cli(["init"], capsys)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith(f"imported 600 ratings by 60 users of 40 books from {data / 'ratings.csv'} into {url}")
    assert lines[2].startswith(f"imported 40 books from {data / 'books.csv'} into {url} in ")
    production = cli_env.production()
    assert production is not None and lines[3].startswith(f"trained and promoted {production}")
    ratings_store = RatingsStore(url)
    assert len(ratings_store.books()) == 40
    assert cli_env.metadata(production)["snapshot"] == {
        "source": "store",
        "url": url,
        **ratings_store.snapshot().summary,
    }
    ratings_store.close()

    shutil.rmtree(data)  # a second run needs no data dir: the store holds the ratings, production exists
    code, out, err = run_cli(["init"], capsys)

    assert code == 0, err
    assert out.splitlines()[1:] == [
        f"ratings store {url} already holds ratings; nothing imported",
        f"model store already initialised: {production} is in production",
    ]


def test_init_on_a_fresh_data_dir_synthesises_readers_of_the_shipped_real_books(
    tmp_path: Path, cli_env: ModelStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'ratings.db'}"
    monkeypatch.setenv("BOOKREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BOOKREC_DATABASE_URL", url)
    monkeypatch.setitem(init_command.PRESETS, "small", dict(users=60, books=40, ratings=600))
    server = fakeredis.FakeServer()
    monkeypatch.setattr(init_command, "redis_client", lambda settings: fakeredis.FakeRedis(server=server))

    code, out, err = run_cli(["init"], capsys)

    assert code == 0, err
    assert out.splitlines()[1] == (
        f"synthesised 600 ratings by 60 readers of 40 real books from {GOODBOOKS_BOOKS} into {tmp_path / 'data'}"
    )
    ratings_store = RatingsStore(url)
    books = ratings_store.books()
    ratings_store.close()
    assert len(books) == 40 and books["1"]["title"] == "The Hunger Games (The Hunger Games, #1)"
    catalog = json.loads((cli_env.root / cli_env.production() / "catalog.json").read_text())
    assert all(book["title"] == books[book["book_id"]]["title"] for book in catalog)
