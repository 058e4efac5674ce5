"""The job functions as a worker runs them: one batched model call per job, entries cached with the TTL, bad ids reported."""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timedelta

import fakeredis
import pandas as pd
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.shared.entries import ENTRY_FIELDS, ITEM_FIELDS
from bookrec.shared.errors import ValidationError
from bookrec.shared.keys import QUEUE_REFRESH, Keys
from bookrec.worker import jobs
from bookrec.worker.serve import context
from bookrec.worker.serve.runtime import ModelRuntime
from tests.unit.conftest import install_context

CACHE_TTL = 1234
KEYS = Keys()


class CountingModule:
    """Wraps a loaded SavedModel and records the batch size of every scoring call (`recommend` by user index, or
    `recommend_history` for a history-based kind)."""

    def __init__(self, module) -> None:
        self.module = module
        self.batch_sizes: list[int] = []
        if hasattr(module, "recommend_history"):
            self.recommend_history = self._recommend_history

    def recommend(self, **inputs):
        self.batch_sizes.append(len(inputs["user"]))
        return self.module.recommend(**inputs)

    def _recommend_history(self, **inputs):
        self.batch_sizes.append(int(inputs["n_readers"]))
        return self.module.recommend_history(**inputs)


@pytest.fixture
def model(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> CountingModule:
    counting = CountingModule(runtime.module)
    monkeypatch.setattr(runtime, "module", counting)
    return counting


@pytest.fixture(autouse=True)
def worker_context(
    trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> context.WorkerContext:
    """A worker context on fakeredis serving the trained version (the holder's watcher thread is not started)."""
    return install_context(trained, runtime, redis, monkeypatch, ["recommend", "refresh"], cache_ttl=CACHE_TTL)


def cached(redis: fakeredis.FakeRedis, user_id: str) -> dict | None:
    raw = redis.get(KEYS.recs(user_id))
    return None if raw is None else json.loads(raw)


def test_a_job_makes_one_batched_model_call_for_its_known_users(runtime: ModelRuntime, model: CountingModule) -> None:
    known = runtime.user_map.to_list()
    users = known + [f"new-{i}" for i in range(1000 - len(known))]

    summary = jobs.recommend(users, n=10)

    assert model.batch_sizes == [len(known)]
    assert summary["users"] == 1000
    assert summary["fallbacks"] == 1000 - len(known)


def test_every_user_is_cached_in_the_documented_shape_with_the_configured_ttl(
    redis: fakeredis.FakeRedis, trained
) -> None:
    users = ["1", "2", "3", "new-reader"]

    jobs.recommend(users, n=12)

    for user in users:
        entry = cached(redis, user)
        assert tuple(entry) == ENTRY_FIELDS
        assert all(tuple(item) == ITEM_FIELDS for item in entry["items"])
        assert (entry["model_version"], entry["n"], len(entry["items"])) == (trained.version, 12, 12)
        assert datetime.fromisoformat(entry["generated_at"]).utcoffset() == timedelta(0)
        assert CACHE_TTL - 5 < redis.ttl(KEYS.recs(user)) <= CACHE_TTL


def test_cached_lists_are_best_first_and_never_hold_a_rated_book(redis: fakeredis.FakeRedis, trained) -> None:
    ratings = pd.read_csv(trained.data_dir / "ratings.csv", dtype={"user_id": str, "book_id": str})
    rated = ratings.groupby("user_id")["book_id"].agg(set)

    jobs.recommend(list(rated.index), n=20)

    for user, books_rated in rated.items():
        items = cached(redis, user)["items"]
        scores = [item["score"] for item in items]
        assert len({item["book_id"] for item in items}) == 20
        assert scores == sorted(scores, reverse=True)
        assert not {str(item["book_id"]) for item in items} & books_rated, (
            f"user {user} was recommended books they rated"
        )


def test_integer_and_string_ids_share_one_cache_entry(redis: fakeredis.FakeRedis) -> None:
    jobs.recommend([42], n=13)
    first = cached(redis, "42")
    jobs.recommend(["42"], n=14)

    assert first["user_id"] == 42
    assert cached(redis, "42")["n"] == 14
    assert [k.decode() for k in redis.scan_iter(match=KEYS.recs_pattern)] == [KEYS.recs("42")]


def test_a_bad_id_is_rejected_while_the_good_ids_are_served(redis: fakeredis.FakeRedis) -> None:
    summary = jobs.recommend([1, True, "2", None, "a*"], n=5)

    assert summary["users"] == 2
    assert [r["user_id"] for r in summary["rejected"]] == ["True", "None", "'a*'"]
    assert all(r["error"] for r in summary["rejected"])
    assert sorted(k.decode() for k in redis.scan_iter(match=KEYS.recs_pattern)) == [KEYS.recs("1"), KEYS.recs("2")]


def test_summary_names_the_version_and_counts(trained) -> None:
    summary = jobs.recommend(["1", "unknown-x"], n=5)

    assert summary["model_version"] == trained.version
    assert (summary["users"], summary["fallbacks"], summary["rejected"]) == (2, 1, [])
    assert summary["seconds"] >= 0


@pytest.mark.parametrize(
    ("user_ids", "n", "problem"),
    [
        ([], 10, "non-empty list"),
        ("1,2", 10, "non-empty list"),
        (list(range(1001)), 10, "at most 1000"),
        ([1], 0, "n must be"),
        ([1], -1, "n must be"),
        ([1], 10**6, "n must be"),
    ],
    ids=["empty", "string", "1001-users", "n=0", "n=-1", "n=10**6"],
)
def test_invalid_jobs_fail_without_writing_anything(
    redis: fakeredis.FakeRedis, model: CountingModule, user_ids, n, problem
) -> None:
    with pytest.raises(ValidationError, match=problem):
        jobs.recommend(user_ids, n=n)

    assert model.batch_sizes == []
    assert list(redis.scan_iter(match=KEYS.recs_pattern)) == []


def test_refresh_fans_out_json_chunks_covering_every_user_once(
    redis: fakeredis.FakeRedis, runtime: ModelRuntime, trained
) -> None:
    summary = jobs.refresh(n=5, chunk=128)

    queue = Queue(QUEUE_REFRESH, connection=redis, serializer=JSONSerializer)
    queued = [queue.fetch_job(job_id) for job_id in queue.job_ids]
    users = [u for job in queued for u in job.kwargs["user_ids"]]
    assert users == runtime.user_map.to_list()
    assert summary == {
        "refresh_id": summary["refresh_id"],
        "users": len(users),
        "chunks": len(queued),
        "model_version": trained.version,
    }
    assert all(len(job.kwargs["user_ids"]) <= 128 and job.kwargs["model_version"] == trained.version for job in queued)
    raw = zlib.decompress(redis.hget(queued[0].key, "data"))
    assert json.loads(raw)[0] == "worker.jobs.recommend"  # the public name, not the module path

    for job in queued:
        jobs.recommend(**job.kwargs)
    assert int(redis.get(KEYS.refresh_done(summary["refresh_id"]))) == len(users)


@pytest.mark.parametrize("path", ["../ratings.csv", "/etc/passwd"])
def test_retrain_reads_only_files_inside_the_data_dir(path: str) -> None:
    with pytest.raises(ValidationError, match="outside BOOKREC_DATA_DIR"):
        jobs.retrain(ratings=path)


def test_a_short_request_never_shrinks_a_longer_list_another_caller_asked_for(redis: fakeredis.FakeRedis) -> None:
    jobs.recommend(["1"], n=50)
    long_list = cached(redis, "1")["items"]

    summary = jobs.recommend(["1"], n=5)

    entry = cached(redis, "1")
    assert (summary["n"], entry["n"], len(entry["items"])) == (50, 50, 50)
    assert [item["book_id"] for item in entry["items"]] == [item["book_id"] for item in long_list]


def test_every_list_is_computed_at_the_largest_n_asked_for_and_at_least_cache_n(redis: fakeredis.FakeRedis) -> None:
    jobs.recommend(["1"], n=3)
    assert cached(redis, "1")["n"] == 10  # BOOKREC_CACHE_N's default

    jobs.recommend(["1"], n=30)
    jobs.recommend(["2", "new-reader"], n=5)

    assert [cached(redis, u)["n"] for u in ("1", "2", "new-reader")] == [30, 30, 30]
    assert redis.get(KEYS.cache_n) == b"30"


def test_cache_n_sets_the_floor_of_every_list(
    trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_context(trained, runtime, redis, monkeypatch, ["recommend"], cache_n=25)

    jobs.recommend(["1"], n=10)

    assert len(cached(redis, "1")["items"]) == 25


def test_a_batch_computed_shorter_than_a_longer_request_meanwhile_is_computed_again(
    redis: fakeredis.FakeRedis, model: CountingModule
) -> None:
    jobs.recommend(["1"], n=10)
    redis.set(KEYS.cache_n, 40)  # another worker took a request for 40 while this one knew only 10
    model.batch_sizes.clear()

    summary = jobs.recommend(["2"], n=10)

    assert model.batch_sizes == [1, 1]  # computed at 10, refused, computed at 40
    assert (summary["n"], cached(redis, "2")["n"], len(cached(redis, "2")["items"])) == (40, 40, 40)
    jobs.recommend(["3"], n=10)
    assert len(model.batch_sizes) == 3  # the worker now knows: one call


def test_with_cache_ttl_0_lists_never_expire(
    trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_context(trained, runtime, redis, monkeypatch, ["recommend"], cache_ttl=0)

    jobs.recommend(["1", "new-reader"], n=10)

    assert [redis.ttl(KEYS.recs(u)) for u in ("1", "new-reader")] == [-1, -1]  # a key without expiry


def test_a_retrain_uses_the_default_books_file_only_if_it_is_there_and_a_named_one_always(tmp_path) -> None:
    from bookrec.worker.jobs import _books_path

    assert _books_path(tmp_path, None) is None  # no books.csv: titles stay null, the retrain goes on
    assert _books_path(tmp_path, "mine.csv") == (tmp_path / "mine.csv").resolve()  # named: read, so it must exist
    (tmp_path / "books.csv").write_text("book_id,title,authors\n")
    assert _books_path(tmp_path, None) == (tmp_path / "books.csv").resolve()
