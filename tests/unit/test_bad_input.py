"""Bad input at every public entry: the CLI, `bookrec.producer.Client`, and job arguments as they arrive from Redis.

Each bad input gets one error that names the problem (a non-zero exit and one line for the CLI),
nothing is enqueued or locked by a refused call, and a bad id never poisons the rest of its batch:
the Client and CLI refuse the whole call before enqueueing; a job that arrives from Redis with
bad ids serves the good ones and lists the bad ones in its result's `rejected`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import fakeredis
import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

import bookrec.producer.client
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import payloads
from bookrec.shared.errors import MalformedEntry, ValidationError
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.jobs import MAX_REJECTED_LISTED
from bookrec.worker.serve import context
from bookrec.worker.serve.rq_worker import MAX_FAILURE_CHARS, MAX_FAILURE_LINE, BookrecWorker
from bookrec.worker.serve.runtime import ModelRuntime
from bookrec.worker.serve.swap import ModelHolder
from tests.conftest import REPO, TrainedStore
from tests.unit.conftest import run_cli

KEYS = Keys()
MILLION = 10**6


def write_bad_files(data_dir: Path, outside: Path) -> None:
    """NaN ratings, Latin-1 text, a books file without its columns, and a symlink leading out of the data dir."""
    header, *rows = (data_dir / "ratings.csv").read_text().splitlines()
    (data_dir / "nan.csv").write_text("\n".join([header, rows[0].rsplit(",", 1)[0] + ",NaN", *rows[1:]]) + "\n")
    (data_dir / "latin1.csv").write_bytes(("\n".join([header, *rows]) + "\nCafé,1,4\n").encode("latin-1"))
    (data_dir / "no_columns_books.csv").write_text("id,name\n1,A book\n")
    outside.write_text((data_dir / "ratings.csv").read_text())
    (data_dir / "escape.csv").symlink_to(outside)


@pytest.fixture(scope="module")
def data_dir(trained: TrainedStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(trained.data_dir, root / "data")
    write_bad_files(root / "data", root / "outside.csv")
    return root / "data"


# ---------------------------------------------------------------- bookrec.producer.Client


@pytest.fixture
def client_redis(redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    """The fakeredis every Client built in the test talks to."""
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: redis)
    return redis


CLIENT_CASES: dict[str, tuple[Callable[[Client], Any], str]] = {
    "user ids None": (lambda c: c.recommend(None), "user ids must be a list, got NoneType"),
    "user ids an int": (lambda c: c.recommend(5), "user ids must be a list, got int"),
    "user ids a string": (lambda c: c.recommend("1,2"), "user ids must be a list, got str"),
    "user ids a dict": (lambda c: c.recommend({"1": 1}), "user ids must be a list, got dict"),
    "a list inside": (lambda c: c.recommend([1, [2]]), r"user id \[2\] is a list"),
    "a fraction": (lambda c: c.recommend([1, 2.5]), "user id 2.5 is not an integer"),
    "empty list": (lambda c: c.recommend([]), "empty"),
    "n=0": (lambda c: c.recommend([1], n=0), "n must be a whole number from 1 to 100, got 0"),
    "n=-1": (lambda c: c.recommend([1], n=-1), "got -1"),
    "n=10^6": (lambda c: c.recommend([1], n=MILLION), "got 1000000"),
    "10^6 users": (lambda c: c.recommend(range(MILLION)), "1000000 user ids"),
    "get ''": (lambda c: c.get(""), "user id '' is empty"),
    "refresh start 'a'": (lambda c: c.refresh(start="a"), "start must be a whole number"),
    "retrain absolute path": (
        lambda c: c.retrain(ratings="/etc/passwd"),
        "'/etc/passwd' points outside BOOKREC_DATA_DIR",
    ),
    "retrain ../ path": (lambda c: c.retrain(books="../books.csv"), "books path '../books.csv' points outside"),
    "retrain params a list": (lambda c: c.retrain(params=[1]), "params must be an object"),
    "retrain unknown param": (
        lambda c: c.retrain(params={"dimm": 8}),
        r"unknown mult-dae hyper-parameter\(s\) dimm; mult-dae takes: dim, dropout",
    ),
    "retrain batch_size 0": (
        lambda c: c.retrain(model="biased-mf", params={"batch_size": 0}),
        "biased-mf hyper-parameter batch_size must be a whole number from 1 to 65536, got 0",
    ),
    "retrain dim a string": (lambda c: c.retrain(params={"dim": "64"}), "dim must be a whole number .* got '64'"),
    "retrain learning_rate 0": (
        lambda c: c.retrain(model="mf", params={"learning_rate": 0}),
        "mf hyper-parameter learning_rate must be a number from 1e-06 to 1, got 0",
    ),
    "retrain unknown kind": (lambda c: c.retrain(model="svd"), "unknown model kind 'svd'; choose one of: mult-dae"),
}


@pytest.mark.parametrize("case", CLIENT_CASES, ids=list(CLIENT_CASES))
def test_the_client_refuses_bad_input_before_enqueueing_or_locking(
    client_redis: fakeredis.FakeRedis, case: str
) -> None:
    call, problem = CLIENT_CASES[case]

    with pytest.raises(ValidationError, match=problem):
        call(Client(settings=Settings()))

    assert list(client_redis.scan_iter(match="rq:*")) == [] and client_redis.get(KEYS.retrain_lock) is None


# ---------------------------------------------------------------- the CLI


CLI_CASES = {
    "n=0": (["recommend", "1", "-n", "0"], "n must be a whole number from 1 to 100, got 0"),
    "n=-1": (["recommend", "1", "-n", "-1"], "got -1"),
    "n=10^6": (["recommend", "1", "-n", str(MILLION)], "got 1000000"),
    "n not a number": (["recommend", "1", "-n", "ten"], "invalid int value: 'ten'"),
    "empty id": (["recommend", "1", ""], "user id '' is empty"),
    "glob id": (["get", "*"], r"user id '\*'"),
    "10^6 users": (["recommend", *map(str, range(MILLION))], "1000000 user ids"),
    "unknown command": (["recommnd", "1"], "invalid choice: 'recommnd'"),
    "NaN ratings": (["data", "inspect", "{data}/nan.csv"], "nan.csv: 1 row has a missing or non-numeric rating"),
    "non-UTF-8 CSV": (["data", "inspect", "{data}/latin1.csv"], "latin1.csv: not UTF-8 text"),
    "train --dim 0": (
        ["train", "--ratings", "{data}/nan.csv", "--dim", "0"],
        "mult-dae hyper-parameter dim must be a whole number from 1 to 4096, got 0",
    ),
    "train --epochs 10^9": (
        ["train", "--ratings", "{data}/nan.csv", "--model", "mf", "--epochs", str(10**9)],
        "mf hyper-parameter epochs must be a whole number from 1 to 200, got 1000000000",
    ),
    "retrain --params unknown key": (
        ["retrain", "--params", '{"dimm": 8}'],
        r"unknown mult-dae hyper-parameter\(s\) dimm",
    ),
    "retrain --params not JSON": (["retrain", "--params", "dim=8"], "argument --params: not JSON"),
    "train --params not JSON": (
        ["train", "--ratings", "{data}/nan.csv", "--params", "l2=9"],
        "argument --params: not JSON",
    ),
    "train --params a list": (
        ["train", "--ratings", "{data}/nan.csv", "--params", "[1]"],
        "a JSON object of hyper-parameters is needed",
    ),
    "train --params ease l2 0": (
        ["train", "--ratings", "{data}/nan.csv", "--model", "ease", "--params", '{"l2": 0}'],
        "ease hyper-parameter l2 must be a number from 0.001 to 1e[+]08, got 0",
    ),
    "train --params ease weighting": (
        ["train", "--ratings", "{data}/nan.csv", "--model", "ease", "--params", '{"weighting": "stars"}'],
        "ease hyper-parameter weighting must be one of 'rating', 'binary', got 'stars'",
    ),
    "train --params a key of another kind": (
        ["train", "--ratings", "{data}/nan.csv", "--model", "ease", "--params", '{"dropout": 0.5}'],
        r"unknown ease hyper-parameter\(s\) dropout; ease takes: l2, weighting, keep, dense_max",
    ),
    "bench --only unknown phase": (["bench", "--only", "ingest"], r"argument --only: invalid choice: 'ingest'"),
    "bench --postgres not PostgreSQL": (
        ["bench", "--only", "ratings", "--postgres", "sqlite:///x.db"],
        r"--postgres sqlite:///x.db is not a PostgreSQL URL",
    ),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_the_cli_exits_non_zero_with_one_line_naming_the_problem(
    case: str, data_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, problem = CLI_CASES[case]
    monkeypatch.setenv(
        "BOOKREC_REDIS_URL", "redis://127.0.0.1:1/0"
    )  # nothing listens: input is checked before Redis is asked

    code, out, err = run_cli([arg.replace("{data}", str(data_dir)) for arg in argv], capsys)

    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bookrec: error: ")
    assert re.search(problem, err)


def test_the_ratings_benchmark_against_a_postgresql_that_does_not_answer_exits_11_before_anything_runs(capsys) -> None:
    code, out, err = run_cli(
        ["bench", "--only", "ratings", "--postgres", "postgresql://bench:secret@127.0.0.1:1/postgres"], capsys
    )

    assert code == 11 and out == ""
    assert len(err.strip().splitlines()) == 1, "one line, and no phase started (each says `bench: …` on stderr)"
    assert "PostgreSQL at postgresql://bench:***@127.0.0.1:1/postgres does not answer" in err and "secret" not in err


def test_training_on_a_books_file_without_its_columns_exits_2_naming_them(data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BOOKREC_MODEL_STORE": str(tmp_path / "models"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bookrec.cli",
            "train",
            "--ratings",
            str(data_dir / "ratings.csv"),
            "--books",
            str(data_dir / "no_columns_books.csv"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 2 and done.stdout == ""
    assert "no_columns_books.csv: missing column(s) title (a books file needs" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "models").exists() or ModelStore(tmp_path / "models").list() == []


# ---------------------------------------------------------------- job arguments as they arrive from Redis


@pytest.fixture
def worker_redis(
    trained: TrainedStore,
    runtime: ModelRuntime,
    redis: fakeredis.FakeRedis,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> fakeredis.FakeRedis:
    """fakeredis with a worker context installed: the trained version served from a copy of its store, `data_dir`
    as BOOKREC_DATA_DIR."""
    shutil.copytree(trained.store, tmp_path / "models")
    store = ModelStore(tmp_path / "models")
    holder = ModelHolder(store, redis, KEYS, "test-worker", [QUEUE_RECOMMEND])
    holder.current = runtime
    monkeypatch.setattr(context, "_context", None)
    context.install(
        context.WorkerContext(Settings(model_store=store.root, data_dir=data_dir), redis, KEYS, store, holder)
    )
    return redis


def run_from_redis(redis: fakeredis.FakeRedis, queue: str, func: str, kwargs: dict, lock: bool = False) -> Job:
    """Enqueue `func(**kwargs)` as JSON (as any producer could) and run a real worker over it; with `lock`, hold
    the retrain lock for the job first, as bookrec.producer.Client does."""
    job = Queue(queue, connection=redis, serializer=JSONSerializer).create_job(func, kwargs=kwargs)
    if lock:
        redis.set(KEYS.retrain_lock, job.id, ex=600)
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_job(job)
    BookrecWorker([queue], connection=redis).work(burst=True, with_scheduler=False)
    return job


def failure(job: Job) -> str:
    """The last line of the job's failure (the exception and its message)."""
    assert job.get_status(refresh=True) == JobStatus.FAILED
    return job.latest_result().exc_string.strip().splitlines()[-1]


RECOMMEND_CASES = {
    "user ids a string": ({"user_ids": "1,2"}, "ValidationError: user_ids must be a non-empty list, got '1,2'"),
    "user ids an object": ({"user_ids": {"1": 1}}, "ValidationError: user_ids must be a non-empty list"),
    "empty list": ({"user_ids": []}, "ValidationError: user_ids must be a non-empty list, got \\[\\]"),
    "n=0": ({"user_ids": [1], "n": 0}, "ValidationError: n must be a whole number from 1 to 100, got 0"),
    "n=-1": ({"user_ids": [1], "n": -1}, "got -1"),
    "n=10^6": ({"user_ids": [1], "n": MILLION}, "got 1000000"),
    "n a string": ({"user_ids": [1], "n": "5"}, "got '5'"),
    "10^6 users": ({"user_ids": list(range(MILLION))}, "ValidationError: 1000000 user ids in one job; at most 1000"),
    "unexpected argument": (
        {"user_ids": [1], "users": [2]},
        "TypeError: recommend\\(\\) got an unexpected keyword argument 'users'",
    ),
}


@pytest.mark.parametrize("case", RECOMMEND_CASES, ids=list(RECOMMEND_CASES))
def test_a_recommend_job_with_bad_arguments_fails_naming_them_and_caches_nothing(
    worker_redis: fakeredis.FakeRedis, case: str
) -> None:
    kwargs, problem = RECOMMEND_CASES[case]

    job = run_from_redis(worker_redis, QUEUE_RECOMMEND, "worker.jobs.recommend", kwargs)

    assert re.search(problem, failure(job))
    assert list(worker_redis.scan_iter(match=KEYS.recs_pattern)) == []


def test_an_unknown_job_name_is_refused_by_name(worker_redis: fakeredis.FakeRedis) -> None:
    job = run_from_redis(worker_redis, QUEUE_RECOMMEND, "bookrec.worker.jobs.recommend_all", {})

    assert "JobNotAllowed: refused to run 'bookrec.worker.jobs.recommend_all'" in failure(job)


def test_a_batch_with_bad_ids_serves_the_good_ones_and_lists_the_bad(
    worker_redis: fakeredis.FakeRedis, trained: TrainedStore
) -> None:
    job = run_from_redis(
        worker_redis, QUEUE_RECOMMEND, "worker.jobs.recommend", {"user_ids": [1, None, "a b", 2, [3], 2.5, "x"]}
    )

    assert job.get_status(refresh=True) == JobStatus.FINISHED
    result = job.latest_result().return_value
    assert [bad["user_id"] for bad in result["rejected"]] == ["None", "'a b'", "[3]", "2.5"]
    assert all(bad["error"].startswith("user id ") for bad in result["rejected"])
    assert result["users"] == 3 and result["model_version"] == trained.version
    assert sorted(k.decode() for k in worker_redis.scan_iter(match=KEYS.recs_pattern)) == [
        KEYS.recs(u) for u in ("1", "2", "x")
    ]


RETRAIN_CASES = {
    "absolute path": (
        {"ratings": "/etc/passwd"},
        "ValidationError: ratings path '/etc/passwd' points outside BOOKREC_DATA_DIR",
    ),
    "../ path": (
        {"books": "../outside.csv"},
        "ValidationError: books path '../outside.csv' points outside BOOKREC_DATA_DIR",
    ),
    "symlink out of the data dir": (
        {"ratings": "escape.csv"},
        "ValidationError: ratings path 'escape.csv' resolves outside BOOKREC_DATA_DIR",
    ),
    "params a list": ({"params": [1]}, "ValidationError: params must be an object of hyper-parameters, got list"),
    "force a string": ({"force": "false"}, "ValidationError: force must be true or false, got 'false'"),
    "seed a string": ({"seed": "x"}, "ValidationError: seed must be a whole number"),
    "NaN ratings": ({"ratings": "nan.csv"}, "DataError: .*nan.csv: 1 row has a missing or non-numeric rating"),
    "non-UTF-8 CSV": ({"ratings": "latin1.csv"}, "DataError: .*latin1.csv: not UTF-8 text"),
    "books missing columns": (
        {"books": "no_columns_books.csv"},
        "DataError: .*no_columns_books.csv: missing column\\(s\\) title \\(a books file needs",
    ),
    "books file missing": ({"books": "missing.csv"}, "DataError: .*missing.csv: no such file"),
    "unknown param": ({"params": {"dimm": 8}}, "ValidationError: unknown mult-dae hyper-parameter\\(s\\) dimm"),
    "epochs 10^9": ({"params": {"epochs": 10**9}}, "ValidationError: mult-dae hyper-parameter epochs must be"),
}


@pytest.mark.parametrize("case", RETRAIN_CASES, ids=list(RETRAIN_CASES))
def test_a_retrain_job_with_bad_arguments_or_data_fails_naming_them_and_releases_the_lock(
    worker_redis: fakeredis.FakeRedis, case: str
) -> None:
    kwargs, problem = RETRAIN_CASES[case]
    store = context.get().store
    before = (store.list(), store.production())

    job = run_from_redis(
        worker_redis, QUEUE_RETRAIN, "worker.jobs.retrain", {"params": {"steps": 5}, **kwargs}, lock=True
    )

    assert re.search(problem, failure(job))
    assert worker_redis.get(KEYS.retrain_lock) is None
    assert (store.list(), store.production()) == before


# ---------------------------------------------------------------- bounded messages and results

HUGE = 100_000  # characters of each hostile value: what a message or a result may quote is far shorter


def test_a_bad_value_is_quoted_by_a_short_prefix_and_its_length() -> None:
    with pytest.raises(ValidationError) as refused:
        payloads.user_id("a" * HUGE)

    message = str(refused.value)
    assert message.startswith("user id 'aaaa") and "(100,002 characters)" in message
    assert len(message) < 200


def test_a_job_of_a_thousand_huge_bad_ids_lists_a_few_and_counts_them_all(worker_redis: fakeredis.FakeRedis) -> None:
    bad = [f"{i} " + "x" * HUGE for i in range(payloads.MAX_USERS_PER_JOB - 1)]  # whitespace: every one is refused

    job = run_from_redis(worker_redis, QUEUE_RECOMMEND, "worker.jobs.recommend", {"user_ids": [*bad, 1]})

    assert job.get_status(refresh=True) == JobStatus.FINISHED
    result = job.latest_result().return_value
    assert result["users"] == 1 and result["rejected_count"] == len(bad)
    assert [r["user_id"][:6] for r in result["rejected"]] == [repr(v)[:6] for v in bad[:MAX_REJECTED_LISTED]]
    assert len(json.dumps(result)) < 20_000  # 134 MB before: every message quoted its whole id
    assert worker_redis.exists(KEYS.recs("1"))


def test_a_failure_quoting_a_huge_value_is_stored_bounded(worker_redis: fakeredis.FakeRedis) -> None:
    job = run_from_redis(worker_redis, QUEUE_RECOMMEND, "worker.jobs.recommend", {"user_ids": [1], "k" * HUGE: 1})

    reason = failure(job)
    assert reason.startswith("TypeError: recommend() got an unexpected keyword argument 'kkkk")
    assert len(reason) <= MAX_FAILURE_LINE + 1
    assert len(job.latest_result().exc_string) <= MAX_FAILURE_CHARS + 1


# ---------------------------------------------------------------- cache entries written by someone else

GOOD_ITEM = {"book_id": 8, "score": 2.5, "title": "A", "authors": "B", "year": 1951, "image_url": None}
GOOD_ENTRY = {
    "user_id": 42,
    "model_version": "v1",
    "generated_at": "t",
    "n": 10,
    "fallback": None,
    "items": [GOOD_ITEM],
}


def entry_with(**changes: Any) -> bytes:
    return json.dumps({**GOOD_ENTRY, **changes}).encode()


MALFORMED_ENTRIES: dict[str, tuple[Any, str]] = {
    "not JSON": (b"{not json", r"not JSON text \(JSONDecodeError\)"),
    "not UTF-8": (b'{"user_id": "\xff"}', r"not JSON text \(UnicodeDecodeError\)"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, r"not JSON text \(RecursionError\)"),
    "a JSON list": (b"[1, 2]", "a JSON list, not an object"),
    "no items": (json.dumps({k: v for k, v in GOOD_ENTRY.items() if k != "items"}).encode(), "no items"),
    "an item without book_id": (entry_with(items=[{"title": "x"}]), "item 0 has no book_id, score"),
    "a score that is text": (entry_with(items=[{**GOOD_ITEM, "score": "high"}]), "item 0 has score 'high'"),
    "items an object": (entry_with(items={"book_id": 1}), "items is {'book_id': 1}"),
    "n a string": (entry_with(n="10"), "n is '10'"),
    "over the size cap": (entry_with(items=[GOOD_ITEM], pad="x" * 2_000_000), "longer than 1,000,000 bytes"),
}


def plant(redis: fakeredis.FakeRedis, value: Any) -> None:
    """What someone else's code might leave at reader 42's cache key."""
    if isinstance(value, dict):
        redis.hset(KEYS.recs("42"), mapping=value)
    else:
        redis.set(KEYS.recs("42"), value)


@pytest.mark.parametrize("case", [*MALFORMED_ENTRIES, "a hash"], ids=[*MALFORMED_ENTRIES, "a hash"])
def test_a_malformed_cache_entry_is_one_clear_error_for_the_client(
    client_redis: fakeredis.FakeRedis, case: str
) -> None:
    value, problem = MALFORMED_ENTRIES.get(case, ({"user_id": "42"}, "holds another type than a string"))
    plant(client_redis, value)

    with pytest.raises(MalformedEntry, match=problem) as refused:
        Client(settings=Settings()).get(42)

    assert str(refused.value).startswith("bookrec:recs:42 is not a bookrec entry: ")
    assert len(str(refused.value)) < 300


@pytest.mark.parametrize("case", MALFORMED_ENTRIES, ids=list(MALFORMED_ENTRIES))
def test_bookrec_get_of_a_malformed_entry_exits_10_with_one_line(
    client_redis: fakeredis.FakeRedis, case: str, capsys: pytest.CaptureFixture
) -> None:
    value, problem = MALFORMED_ENTRIES[case]
    plant(client_redis, value)

    code, out, err = run_cli(["get", "42"], capsys)

    assert (code, out) == (MalformedEntry.exit_code, "") and MalformedEntry.exit_code == 10
    assert len(err.strip().splitlines()) == 1 and err.startswith(
        "bookrec: error: bookrec:recs:42 is not a bookrec entry"
    )
    assert re.search(problem, err)


def test_a_well_formed_entry_is_still_read(client_redis: fakeredis.FakeRedis) -> None:
    plant(client_redis, entry_with())

    assert Client(settings=Settings()).get(42).entry == GOOD_ENTRY
