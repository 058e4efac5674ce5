"""What reading readers' deltas costs a worker: `python -m bookrec.bench.delta_read [--quick] [--redis-db N]`.

On the benchmark's cached catalogue and base model (`bookrec bench` makes them; this synthesises and trains them if
absent), in this process with one TensorFlow thread like a worker, for batches of 500 readers (a refresh chunk):

- scoring: `ModelRuntime.recommend` alone;
- index path: `recommend` from the version's history only + the cache write (`delta.write_lists`), a job's work
  before deltas existed (the issue's reference);
- current history, no deltas: `delta.read` of the 500 readers (none has one) + `recommend` + the cache write;
- current history, deltas: the same after every reader was given DELTA_BOOKS rated books and one removal;

and the `delta.read` round trip alone. Prints users/s and the ratio to the index path (target: >= 80%). Uses its
own Redis database (default 12), which it flushes before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import redis

from bookrec.bench.catalogue import FULL, QUICK, REAL_BOOKS, REPO, prepare
from bookrec.model_store.store import ModelStore
from bookrec.shared import delta
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import StoredRating

BATCH = 500
DELTA_BOOKS = 5
PASSES = 3


def _timed(step: Callable[[list[str]], None], batches: list[list[str]]) -> float:
    """Users per second of `step` over every batch: the median of PASSES passes."""
    rates = []
    for _ in range(PASSES):
        started = time.perf_counter()
        for batch in batches:
            step(batch)
        rates.append(sum(map(len, batches)) / (time.perf_counter() - started))
    return statistics.median(rates)


def _give_deltas(client: redis.Redis, keys: Keys, users: list[str], items: list[str]) -> None:
    """DELTA_BOOKS rated books and one removed rating for each of `users`, written as the ingest writes them."""
    rng = np.random.default_rng(0)
    now = time.time()
    for start in range(0, len(users), BATCH):
        rows = [
            StoredRating(user, items[i], 4.0 if n < DELTA_BOOKS else None, now, now)
            for user in users[start : start + BATCH]
            for n, i in enumerate(rng.choice(len(items), DELTA_BOOKS + 1, replace=False))
        ]
        delta.write(client, keys, rows, {user: f"{int(now * 1000)}-0" for user in users[start : start + BATCH]})


def measure(quick: bool, redis_url: str) -> dict[str, float]:
    """The figures described in the module's docstring."""
    from bookrec.worker.serve.runtime import ModelRuntime
    from bookrec.worker.serve.tf_setup import configure_tensorflow

    configure_tensorflow(1)
    prepared = prepare(
        QUICK if quick else FULL, REPO / "var" / "bench", REAL_BOOKS if REAL_BOOKS.exists() else None, print
    )
    version = prepared.base_version or _train(prepared)
    runtime = ModelRuntime.load(ModelStore(prepared.store), version)
    client, keys = redis.Redis.from_url(redis_url), Keys()
    client.flushdb()
    users = runtime.user_map.to_list()[: 20 * BATCH]
    batches = [users[i : i + BATCH] for i in range(0, len(users), BATCH)]

    def index_job(batch: list[str]) -> None:
        entries = runtime.recommend(batch, 10).entries
        delta.write_lists(client, keys, [(u, e, 0) for u, e in zip(batch, entries)], 10, None, "bench")

    def job(batch: list[str]) -> None:
        deltas = delta.read(client, keys, batch)
        entries = runtime.recommend(batch, 10, deltas).entries
        delta.write_lists(client, keys, list(zip(batch, entries, (d.seq for d in deltas))), 10, None, "bench")

    try:
        runtime.recommend(batches[0], 10)  # warm
        figures = {"scoring": _timed(lambda b: runtime.recommend(b, 10), batches)}
        figures["index_path"] = _timed(index_job, batches)
        figures["current_no_deltas"] = _timed(job, batches)
        _give_deltas(client, keys, users, runtime.item_map.to_list())
        figures["current_deltas"] = _timed(job, batches)
        read_ms = []
        for batch in batches:
            started = time.perf_counter()
            delta.read(client, keys, batch)
            read_ms.append((time.perf_counter() - started) * 1000)
        figures["read_ms_per_batch"] = statistics.median(read_ms)
    finally:
        client.flushdb()
    return figures


def _train(prepared) -> str:
    from bookrec.worker.learn.pipeline import TrainRequest, train_version

    request = TrainRequest(
        ratings=prepared.data_dir / "ratings.csv", books=prepared.data_dir / "books.csv", kind=prepared.kind
    )
    return train_version(ModelStore(prepared.store), request)["version"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.bench.delta_read", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 users x 2,000 books instead of goodbooks' shape")
    parser.add_argument("--redis-db", type=int, default=12, metavar="N", help="the Redis database to use (default 12)")
    parser.add_argument("--redis", default="redis://localhost:6379", help="Redis server (default localhost:6379)")
    args = parser.parse_args(argv)
    figures = measure(args.quick, f"{args.redis}/{args.redis_db}")
    base = figures["index_path"]
    print(f"batches of {BATCH} readers, n=10, one TensorFlow thread, {PASSES} passes (median)")
    for name in ("scoring", "index_path", "current_no_deltas", "current_deltas"):
        print(f"{name:18} {figures[name]:10,.0f} users/s  {figures[name] / base:6.1%} of the index path")
    print(f"delta.read of {BATCH} readers with {DELTA_BOOKS + 1} books each: {figures['read_ms_per_batch']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
