"""Fixtures shared by unit and integration tests.

Integration tests use the real Redis at BOOKREC_TEST_REDIS_URL (default redis://localhost:6379/13,
a database of its own that is flushed before and after each test) and real worker processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

from bookrec.shared.keys import Keys
from bookrec.shared.logs import HANDLER_NAME
from bookrec.shared.worker_state import read_all as worker_states
from bookrec.worker.serve.launch import WorkerProcesses

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MOVIELENS = SHARED_DATA / "movielens" / "ml-latest-small" / "ratings.csv"
GOODBOOKS_BOOKS = REPO / "bookrec" / "worker" / "learn" / "goodbooks" / "books.csv"
"""goodbooks-10k's books.csv as bookrec ships it: real titles for the synthetic catalogues."""
BOOKS_SAMPLE = REPO / "tests" / "fixtures" / "books_sample.csv"
"""The first 200 books of goodbooks-10k's books.csv (the titles a catalogue of 200 synthetic books takes)."""
TEST_REDIS_URL = os.environ.get("BOOKREC_TEST_REDIS_URL", "redis://localhost:6379/13")


@pytest.fixture(autouse=True)
def _process_logging_undone() -> Iterator[None]:
    """A command run in process (`bookrec dashboard` refusing a port, say) sets up the root logger as for a process of
    its own, with a handler on the stderr pytest gave that test and closes after it: remove it afterwards, so later
    tests' log lines do not go to a closed stream ("--- Logging error ---" in their captured stderr)."""
    root = logging.getLogger()
    configured, level = getattr(root, "_bookrec_configured", False), root.level
    yield
    if not configured:
        root.setLevel(level)
        for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
            root.removeHandler(handler)
        root._bookrec_configured = False  # type: ignore[attr-defined]


def loaded_after(imports: str, among: set[str]) -> list[str]:
    """Which of the top-level packages `among` a fresh interpreter has loaded after `import {imports}`, sorted: how
    tests check that a process's imports stay light (no TensorFlow in what forks jobs or serves pages)."""
    check = f"import sys, {imports}; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(among)!r}))))"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True)
    return [name for name in result.stdout.strip().split(",") if name]


@dataclass(frozen=True)
class TrainedStore:
    """A tiny synthetic catalogue and a model store with one promoted-ready version."""

    data_dir: Path
    store: Path
    version: str

    def env(self, redis_url: str = TEST_REDIS_URL, **extra: str) -> dict[str, str]:
        """Environment for a bookrec process using this store and data dir; it serves no metrics unless `extra`
        gives it a metrics port."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
        env.update(
            BOOKREC_REDIS_URL=redis_url,
            BOOKREC_MODEL_STORE=str(self.store),
            BOOKREC_DATA_DIR=str(self.data_dir),
            BOOKREC_TF_THREADS="1",
            BOOKREC_LOG_LEVEL="INFO",
            BOOKREC_METRICS_PORT="0",
            BOOKREC_INGEST_METRICS_PORT="0",
            BOOKREC_SCHEDULER_METRICS_PORT="0",
        )
        env.update(extra)
        return env


def synth_small(out: Path, users: int = 300, books: int = 200, ratings: int = 6000, seed: int = 0) -> Path:
    """Write a tiny goodbooks-shaped catalogue (real titles, from the shipped goodbooks books.csv) into `out`."""
    from bookrec.worker.learn.synth import synthesise

    synthesise(
        out,
        users=users,
        books=books,
        ratings=ratings,
        seed=seed,
        books_from=GOODBOOKS_BOOKS,
    )
    return out


PLANTED_GROUPS = 6
"""Taste groups in `planted_tastes`: reader `u` belongs to group `u % PLANTED_GROUPS`, and so does book `b`."""


def planted_tastes(
    path: Path, users: int = 600, items: int = 240, groups: int = PLANTED_GROUPS, per_user: int = 24, seed: int = 0
) -> Path:
    """Readers in `groups` taste groups, each rating mostly books of its own group, with a popular head shared by all
    (book 0 the most popular); written to `path` as user_id, book_id, rating."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    group_of_item = np.arange(items) % groups
    popularity = 1.0 / np.arange(1, items + 1) ** 0.5
    rows = []
    for user in range(users):
        taste = user % groups
        weights = popularity * np.where(group_of_item == taste, 8.0, 1.0)
        chosen = rng.choice(items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [(user, int(item), int(rng.integers(3, 6))) for item in chosen]
    pd.DataFrame(rows, columns=["user_id", "book_id", "rating"]).to_csv(path, index=False)
    return path


def train_tiny(store: Path, data_dir: Path, kind: str = "mult-dae", seed: int = 0) -> str:
    """Train a small, fast model version into `store`; return its id."""
    from bookrec.model_store.store import ModelStore
    from bookrec.worker.learn.pipeline import TrainRequest, train_version

    params = {"mult-dae": {"steps": 60}, "ease": {"l2": 30.0}}.get(kind, {"epochs": 3})
    request = TrainRequest(
        ratings=data_dir / "ratings.csv", books=data_dir / "books.csv", kind=kind, params=params, seed=seed
    )
    return train_version(ModelStore(store), request)["version"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedStore:
    """One tiny catalogue and trained version for the whole session (copy `store` before changing it)."""
    root = tmp_path_factory.mktemp("trained")
    data = synth_small(root / "data")
    version = train_tiny(root / "models", data)
    return TrainedStore(data, root / "models", version)


@pytest.fixture
def fresh_store(trained: TrainedStore, tmp_path: Path) -> TrainedStore:
    """A private copy of the trained store, safe to promote into, delete from or damage."""
    import shutil

    shutil.copytree(trained.store, tmp_path / "models")
    return TrainedStore(trained.data_dir, tmp_path / "models", trained.version)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The real Redis test database, flushed before and after the test."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"integration tests need Redis at {TEST_REDIS_URL} ({exc}); .ci/run starts one")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class WorkerPool(WorkerProcesses):
    """A real `bookrec worker` supervisor in a subprocess."""

    def __init__(
        self, env: dict[str, str], queues: str = "recommend,refresh", processes: int = 2, log: Path | None = None
    ) -> None:
        super().__init__(env, queues, processes, log)

    def wait_ready(
        self, client: redis.Redis, count: int, version: str | None, timeout: float = 60.0, prefix: str = "bookrec:"
    ) -> None:
        """Wait until `count` workers report `version` loaded (any version if None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = worker_states(client, Keys(prefix))
            if sum(1 for s in states if s.get("version") and version in (None, s["version"])) >= count:
                return
            if self.exit_code() is not None:
                raise AssertionError(f"worker supervisor exited with {self.exit_code()}; log: {self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"{count} workers did not load {version} within {timeout} s; log: {self.log_tail()}")


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator:
    """Factory starting WorkerPools that are all stopped at the end of the test."""
    pools: list[WorkerPool] = []

    def start(env: dict[str, str], queues: str = "recommend,refresh", processes: int = 2) -> WorkerPool:
        pool = WorkerPool(env, queues, processes, log=tmp_path / f"workers-{len(pools)}.log")
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.stop()


def changed_copy(store: TrainedStore, out: Path) -> TrainedStore:
    """`store` with a data dir in `out` holding a changed copy of its ratings (5% of the rows gone), so a retrain
    on it trains, and the gate judges it on rows production held out."""
    import pandas as pd

    data = out / "data"
    data.mkdir()
    ratings = pd.read_csv(store.data_dir / "ratings.csv")
    ratings.sample(frac=0.95, random_state=0).to_csv(data / "ratings.csv", index=False)
    return TrainedStore(data, store.store, store.version)


@dataclass
class PrivatePool:
    """Two serving workers on a private redis-server, as `pool_on_private_redis` starts them."""

    server: Any
    env: dict[str, str]
    client: redis.Redis
    pool: WorkerPool
    log: Path


@contextmanager
def pool_on_private_redis(root: Path, store: TrainedStore, server: Any, **env: str) -> Iterator[PrivatePool]:
    """Start `server` (a tests.integration.redis_server.RedisServer), promote `store`'s version on it and run two
    serving workers with `env` added, logging to `root/workers.log`; stop both at the end."""
    from bookrec.model_store.promotion import promote
    from bookrec.model_store.store import ModelStore

    server.start()
    full_env = store.env(server.url(), **env)
    client = redis.Redis.from_url(server.url())
    promote(ModelStore(store.store), client, Keys(), store.version)
    log = root / "workers.log"
    pool = WorkerPool(full_env, processes=2, log=log)
    try:
        pool.wait_ready(client, 2, store.version, timeout=90)
        yield PrivatePool(server, full_env, client, pool, log)
    finally:
        pool.stop()
        server.stop()
