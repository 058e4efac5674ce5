"""Unit-test fixtures: fakeredis, the trained version loaded as a runtime, and a worker context around them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import fakeredis
import pytest

from bookrec import cli
from bookrec.cli import build_parser
from bookrec.model_store.store import ModelStore
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve import context
from bookrec.worker.serve.runtime import ModelRuntime
from bookrec.worker.serve.swap import ModelHolder

if TYPE_CHECKING:
    from bookrec.ratings.store import RatingsStore


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """A fresh in-memory Redis server; a test can take it down with `server.connected = False`."""
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """A client of `server`."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture(scope="session")
def runtime(trained) -> ModelRuntime:
    """The session's trained version, loaded as a worker loads it."""
    return ModelRuntime.load(ModelStore(trained.store), trained.version)


def install_context(
    trained, runtime: ModelRuntime, redis, monkeypatch: pytest.MonkeyPatch, queues: list[str], **settings
) -> context.WorkerContext:
    """Install a worker context on `redis` serving `runtime` (the holder's watcher thread is not started)."""
    store = ModelStore(trained.store)
    holder = ModelHolder(store, redis, Keys(), "test-worker", queues)
    holder.current = runtime
    ctx = context.WorkerContext(
        Settings(model_store=trained.store, data_dir=trained.data_dir, **settings), redis, Keys(), store, holder
    )
    monkeypatch.setattr(context, "_context", None)
    context.install(ctx)
    return ctx


@pytest.fixture
def ratings_store(tmp_path) -> Iterator[RatingsStore]:
    """A migrated ratings store in a SQLite file of the test's own, closed afterwards."""
    from bookrec.ratings.store import RatingsStore

    store = RatingsStore(f"sqlite:///{tmp_path / 'ratings.db'}")
    store.upgrade()
    yield store
    store.close()


@pytest.fixture
def store(ratings_store) -> RatingsStore:
    """`ratings_store` under the name the ingest, delta and bulk tests use (a module may define its own `store`)."""
    return ratings_store


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bookrec ARGV` run in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def parse_bookrec(argv: list[str], capsys: pytest.CaptureFixture[str]):
    """Parse `argv` with the real `bookrec` parser, failing the test with its error message."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        message = capsys.readouterr().err.strip() or "no message"
        pytest.fail(f"`bookrec {' '.join(argv)}` is not a command the bookrec CLI accepts (exit {exc.code}): {message}")
