"""Promotion and rollback: store record, Redis pointer and event move together; Redis outages are survivable."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import fakeredis
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import current_version, promote, rollback
from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import CatalogueMismatch, CorruptVersion, ModelStoreError, RedisUnavailable
from bookrec.shared.keys import QUEUE_REFRESH, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.retrain import run_retrain
from tests.unit.conftest import install_context

KEYS = Keys("t:")


def save(store: ModelStore, items: range | None = None) -> str:
    """Save a one-file version (trained on the item ids `items`, if given) and return its id."""
    with store.new_version(kind_hint="mf") as writer:
        (writer.path / "weights.bin").write_bytes(b"weights")
        writer.finish({"id_maps": {"users": [], "items": [str(i) for i in items]}} if items else {})
    return writer.version


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path)


@pytest.fixture
def pubsub(redis: fakeredis.FakeRedis):
    subscription = redis.pubsub()
    subscription.subscribe(KEYS.events)
    subscription.get_message(timeout=0)
    return subscription


def events(pubsub) -> list[dict]:
    """Every event published since the subscription, decoded."""
    messages = iter(lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0), None)
    return [json.loads(m["data"]) for m in messages]


def test_promote_records_points_and_announces(store: ModelStore, redis, pubsub) -> None:
    first, second = save(store), save(store)
    promote(store, redis, KEYS, first)

    event = promote(store, redis, KEYS, second, reason="gate passed")

    assert event["event"] == "model_promoted"
    assert (event["version"], event["previous"], event["reason"]) == (second, first, "gate passed")
    assert event["at"].endswith("Z")
    assert store.production() == second
    assert redis.get(KEYS.model_current) == second.encode()
    published = events(pubsub)
    assert [(e["version"], e["previous"]) for e in published] == [(first, None), (second, first)]
    assert {**published[-1], "refresh_job": None} == event  # no settings given: no refresh scheduled


def test_rollback_promotes_the_previous_version(store: ModelStore, redis, pubsub) -> None:
    first, second = save(store), save(store)
    promote(store, redis, KEYS, first)
    promote(store, redis, KEYS, second)

    event = rollback(store, redis, KEYS)

    assert (event["version"], event["previous"], event["reason"]) == (first, second, "rollback")
    assert store.production() == first
    assert redis.get(KEYS.model_current) == first.encode()
    assert {**events(pubsub)[-1], "refresh_job": None} == event


def test_rollback_walks_back_through_production_s_history(store: ModelStore, redis, pubsub) -> None:
    v1, v2, v3, v4 = (save(store) for _ in range(4))
    for version in (v1, v2, v3):
        promote(store, redis, KEYS, version)

    assert (rollback(store, redis, KEYS)["version"], redis.get(KEYS.model_current)) == (v2, v2.encode())
    assert (rollback(store, redis, KEYS)["version"], redis.get(KEYS.model_current)) == (v1, v1.encode())
    with pytest.raises(ModelStoreError, match="nothing to roll back to"):
        rollback(store, redis, KEYS)
    promote(store, redis, KEYS, v4)
    event = rollback(store, redis, KEYS)

    assert (event["version"], event["previous"], event["reason"]) == (v1, v4, "rollback")
    assert store.production() == v1 and redis.get(KEYS.model_current) == v1.encode()
    assert [(e["version"], e["previous"]) for e in events(pubsub)] == [
        (v1, None),
        (v2, v1),
        (v3, v2),
        (v2, v3),
        (v1, v2),
        (v4, v1),
        (v1, v4),
    ]


def test_another_catalogue_is_refused_everywhere_unless_forced(store: ModelStore, redis, pubsub) -> None:
    books, movies = save(store, range(1, 101)), save(store, range(500, 600))
    promote(store, redis, KEYS, books)

    with pytest.raises(CatalogueMismatch, match=f"refusing to promote {movies} .* over production {books}"):
        promote(store, redis, KEYS, movies, refresh=Settings())

    assert store.production() == books and redis.get(KEYS.model_current) == books.encode()
    assert [e["version"] for e in events(pubsub)] == [books]
    assert Queue(QUEUE_REFRESH, connection=redis, serializer=JSONSerializer).count == 0
    event = promote(store, redis, KEYS, movies, reason="new catalogue", force=True)
    assert (event["version"], event["previous"]) == (movies, books)
    assert redis.get(KEYS.model_current) == movies.encode()


@pytest.mark.parametrize("how", ["promote", "rollback"])
def test_every_promotion_path_schedules_one_refresh_of_the_cached_lists(store: ModelStore, redis, how: str) -> None:
    first, second = save(store), save(store)
    promote(store, redis, KEYS, first)
    promote(store, redis, KEYS, second)
    refresh_queue = Queue(KEYS.queue(QUEUE_REFRESH), connection=redis, serializer=JSONSerializer)  # under the prefix
    assert refresh_queue.count == 0

    event = (
        promote(store, redis, KEYS, first, refresh=Settings())
        if how == "promote"
        else rollback(store, redis, KEYS, refresh=Settings())
    )

    assert refresh_queue.job_ids == [event["refresh_job"]]
    job = refresh_queue.fetch_job(event["refresh_job"])
    assert job.func_name == "worker.jobs.refresh" and job.kwargs == {}
    assert store.production() == first


def test_rollback_with_no_earlier_version_says_so(store: ModelStore, redis) -> None:
    promote(store, redis, KEYS, save(store))

    with pytest.raises(ModelStoreError, match="nothing to roll back to"):
        rollback(store, redis, KEYS)


def test_corrupt_version_is_not_promoted_anywhere(store: ModelStore, redis, pubsub) -> None:
    good, bad = save(store), save(store)
    promote(store, redis, KEYS, good)
    (store.root / bad / "weights.bin").write_bytes(b"tampered")

    with pytest.raises(CorruptVersion, match="weights.bin"):
        promote(store, redis, KEYS, bad)

    assert store.production() == good
    assert redis.get(KEYS.model_current) == good.encode()
    assert [e["version"] for e in events(pubsub)] == [good]


def test_redis_down_still_updates_the_store_record(store: ModelStore, redis, server) -> None:
    version = save(store)
    server.connected = False

    with pytest.raises(RedisUnavailable, match="store record was updated") as err:
        promote(store, redis, KEYS, version)

    assert "when Redis returns" in str(err.value)
    assert store.production() == version


def test_current_version_reads_the_pointer(store: ModelStore, redis) -> None:
    recorded, pointed = save(store), save(store)
    store.set_production(recorded)
    redis.set(KEYS.model_current, pointed)

    assert current_version(store, redis, KEYS) == pointed


def test_current_version_restores_a_lost_pointer_from_the_store(store: ModelStore, redis, caplog) -> None:
    version = save(store)
    promote(store, redis, KEYS, version)
    redis.delete(KEYS.model_current)

    with caplog.at_level(logging.WARNING, logger="bookrec.model_store.promotion"):
        assert current_version(store, redis, KEYS) == version

    assert redis.get(KEYS.model_current) == version.encode()
    assert any(r.levelno == logging.WARNING and version in r.getMessage() for r in caplog.records)


def test_current_version_is_none_before_any_promotion(store: ModelStore, redis) -> None:
    save(store)

    assert current_version(store, redis, KEYS) is None
    assert redis.get(KEYS.model_current) is None


@pytest.mark.parametrize(
    "garbage",
    [b"garbage", b"v20991231T000000000000Z", b"../etc", b"\xff\xfe"],
    ids=["word", "absent id", "path", "bytes"],
)
def test_a_pointer_naming_no_version_is_ignored_and_set_back_to_the_store_record(
    store: ModelStore, redis, caplog, garbage: bytes
) -> None:
    version = save(store)
    promote(store, redis, KEYS, version)
    redis.set(KEYS.model_current, garbage)

    with caplog.at_level(logging.WARNING, logger="bookrec.model_store.promotion"):
        assert current_version(store, redis, KEYS) == version

    assert redis.get(KEYS.model_current) == version.encode()
    assert any("no version in" in r.getMessage() and version in r.getMessage() for r in caplog.records)


def test_with_production_s_directory_gone_a_garbage_pointer_is_still_set_back_to_the_record(
    store: ModelStore, redis
) -> None:
    version = save(store)
    promote(store, redis, KEYS, version)
    shutil.move(store.root / version, store.root.parent / "moved-away")
    redis.set(KEYS.model_current, "garbage")

    assert current_version(store, redis, KEYS) == version, "loading it fails naming the missing directory"
    assert redis.get(KEYS.model_current) == version.encode()


def test_a_garbage_pointer_with_nothing_in_production_is_removed(store: ModelStore, redis) -> None:
    save(store)
    redis.set(KEYS.model_current, "garbage")

    assert current_version(store, redis, KEYS) is None
    assert redis.get(KEYS.model_current) is None


def test_current_version_with_redis_down_is_a_clear_error(store: ModelStore, redis, server) -> None:
    server.connected = False

    with pytest.raises(RedisUnavailable, match="Redis did not answer"):
        current_version(store, redis, KEYS)


def another_catalogue(ratings: Path, out: Path) -> Path:
    """`ratings` with every book id moved past the originals: the same readers and tastes, other books."""
    with ratings.open(newline="") as source, out.open("w", newline="") as target:
        rows = csv.DictReader(source)
        writer = csv.DictWriter(target, fieldnames=rows.fieldnames)
        writer.writeheader()
        writer.writerows({**row, "book_id": int(row["book_id"]) + 100_000} for row in rows)
    return out


@pytest.mark.parametrize("force", [False, True], ids=["refused and recorded", "forced"])
def test_a_retrain_on_another_catalogue_is_rejected_unless_forced(
    fresh_store, runtime, redis, monkeypatch, tmp_path: Path, force: bool
) -> None:
    store = ModelStore(fresh_store.store)
    store.set_production(fresh_store.version)
    ratings = another_catalogue(fresh_store.data_dir / "ratings.csv", tmp_path / "movies.csv")
    ctx = install_context(fresh_store, runtime, redis, monkeypatch, ["retrain"], gate_tolerance=1.0)

    result = run_retrain(ctx, None, "mult-dae", {"steps": 60}, ratings, None, force=force, seed=0)

    candidate = result["version"]
    assert result["promoted"] is force
    if force:
        assert store.production() == candidate
        assert store.decision(candidate)["decision"] == "promoted"
    else:
        assert store.production() == fresh_store.version
        assert result["decision"]["reason"].startswith(f"refusing to promote {candidate} (trained on {ratings}")
        decision = store.decision(candidate)
        assert (decision["decision"], decision["reason"]) == ("rejected", result["decision"]["reason"])
        assert [v["decision"] for v in store.list() if v["version"] == candidate] == ["rejected"]
