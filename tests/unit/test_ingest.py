"""The ingest on fakeredis with a SQLite store: good and bad events in one batch, the dead stream with reasons,
redelivery applied once, the latest ts winning in any order, claiming a dead consumer's entries, trimming, replay."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import fakeredis
import pytest
import redis.exceptions as redis_errors

from bookrec import cli
from bookrec.ingest import consumer
from bookrec.ingest.consumer import GROUP, Ingest, dead_letters, replay
from bookrec.ratings import store as store_module
from bookrec.ratings.store import RatingsStore
from bookrec.shared.errors import RatingsStoreError
from bookrec.shared.settings import Settings

STREAM = "bookrec:ratings"
DEAD = "bookrec:ratings:dead"


@pytest.fixture
def ingest(redis: fakeredis.FakeRedis, store: RatingsStore) -> Ingest:
    consumer = Ingest(redis, store, Settings(ingest_claim_s=1, ingest_batch=50), name="unit-a")
    consumer.ensure_group()
    return consumer


def live(store: RatingsStore) -> dict[tuple[str, str], float]:
    return {(user, book): rating for user, book, rating in store.snapshot().rows}


def add(redis: fakeredis.FakeRedis, **fields: str) -> str:
    return redis.xadd(STREAM, fields).decode()


def test_good_and_bad_events_in_one_batch(ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore) -> None:
    add(redis, user_id="1", book_id="10", rating="4")
    bad_rating = add(redis, user_id="1", book_id="11", rating="7")
    add(redis, user_id="2", book_id="10", rating="3.5")
    add(redis, user_id="2", book_id="12")
    add(redis, user_id="3", book_id="b" * 128, rating="2")  # the longest id the stream's contract allows

    result = ingest.step()

    assert (result.read, result.applied, result.dead) == (5, 3, 2)
    assert live(store) == {("1", "10"): 4.0, ("2", "10"): 3.5, ("3", "b" * 128): 2.0}
    letters = dead_letters(redis, ingest.keys)
    assert [x.reason for x in letters] == ["rating '7' is outside the scale 0.5 to 5", "missing rating"]
    assert letters[0].fields == {b"user_id": b"1", b"book_id": b"11", b"rating": b"7"}
    assert letters[0].stream_id != bad_rating  # a new entry in the dead stream
    assert redis.xpending(STREAM, GROUP)["pending"] == 0, "every entry, good or bad, is acknowledged"


def test_an_event_the_store_refuses_is_dead_alone_and_the_rest_of_its_batch_lands(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "ID_LENGTH", 64)  # a store whose rule is narrower than the stream's
    add(redis, user_id="1", book_id="10", rating="4")
    add(redis, user_id="3", book_id="b" * 100, rating="2")
    add(redis, user_id="2", book_id="10", rating="3.5")

    result = ingest.step()

    assert (result.read, result.applied, result.dead) == (3, 2, 1)
    assert live(store) == {("1", "10"): 4.0, ("2", "10"): 3.5}
    assert "must be 1 to 64 characters" in dead_letters(redis, ingest.keys)[0].reason


def test_a_redelivered_entry_changes_the_store_once(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    add(redis, user_id="1", book_id="10", rating="4", event_id="e1")
    add(redis, user_id="1", book_id="11", rating="9")
    entries = ingest.read()
    assert ingest.process(entries).applied == 1
    again = ingest.process(entries)  # as after a crash between commit and acknowledgement
    add(redis, user_id="1", book_id="10", rating="1", event_id="e1")  # same event_id, another stream id
    resent = ingest.step()

    assert (again.applied, again.duplicate) == (0, 1)
    assert (resent.applied, resent.duplicate) == (0, 1)
    assert live(store) == {("1", "10"): 4.0}
    assert len(dead_letters(redis, ingest.keys)) == 2  # the bad one was dead-lettered on each delivery it got


def test_the_latest_ts_wins_whatever_the_arrival_order(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    add(redis, user_id="1", book_id="10", rating="5", ts="300")
    add(redis, user_id="1", book_id="10", rating="1", ts="100")
    ingest.step()
    add(redis, user_id="1", book_id="10", rating="2", ts="200")
    add(redis, user_id="1", book_id="11", op="delete", ts="500")
    add(redis, user_id="1", book_id="11", rating="3", ts="400")
    ingest.step()

    assert live(store) == {("1", "10"): 5.0}


def test_entries_a_dead_consumer_left_pending_are_claimed_and_applied_once(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    add(redis, user_id="1", book_id="10", rating="4")
    add(redis, user_id="2", book_id="10", rating="2")
    redis.xreadgroup(GROUP, "died", {STREAM: ">"}, count=10)  # read, never acknowledged
    assert ingest.read() == [], "not claimed before BOOKREC_INGEST_CLAIM_S"

    later = Ingest(redis, store, Settings(ingest_claim_s=0), name="unit-b")  # as once the claim time has passed
    result = later.process(later.read())

    assert (result.read, result.applied) == (2, 2)
    assert live(store) == {("1", "10"): 4.0, ("2", "10"): 2.0}
    assert redis.xpending(STREAM, GROUP)["pending"] == 0


def test_a_failing_store_acknowledges_nothing_and_the_batch_is_retried(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(redis, user_id="1", book_id="10", rating="4")
    add(redis, user_id="1", book_id="11", rating="0")

    def down(events):
        raise RatingsStoreError("ratings store at sqlite:///x failed: disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(store, "apply", down)
        with pytest.raises(RatingsStoreError):
            ingest.step()
    assert redis.xpending(STREAM, GROUP)["pending"] == 2
    assert redis.xlen(DEAD) == 0, "no dead letter before the batch commits"

    result = ingest.step()  # this consumer's own pending entries first

    assert (result.read, result.applied, result.dead) == (2, 1, 1)
    assert redis.xpending(STREAM, GROUP)["pending"] == 0


def test_an_ingest_started_while_the_store_is_down_waits_with_backoff_then_applies_everything(
    ingest: Ingest,
    redis: fakeredis.FakeRedis,
    store: RatingsStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add(redis, user_id="1", book_id="10", rating="4")
    add(redis, user_id="2", book_id="10", rating="9")
    migrate, seen_while_down = store.upgrade, []

    def down_twice() -> str:
        if len(seen_while_down) < 2:
            seen_while_down.append((redis.xlen(STREAM), redis.xpending(STREAM, GROUP)["pending"], redis.xlen(DEAD)))
            raise RatingsStoreError("ratings store at postgresql+psycopg://u:***@db/x failed: Connection refused")
        return migrate()

    monkeypatch.setattr(store, "upgrade", down_twice)
    monkeypatch.setattr(consumer, "BACKOFF_START_S", 0.1)
    ingest.settings = ingest.settings.with_overrides(ingest_block_ms=20)
    runner = threading.Thread(target=ingest.run)
    with caplog.at_level("WARNING", logger=consumer.__name__):
        runner.start()
        try:
            wait_for(lambda: live(store) == {("1", "10"): 4.0} and redis.xlen(DEAD) == 1)
        finally:
            ingest.stop.set()
            runner.join(10)

    assert seen_while_down == [(2, 0, 0), (2, 0, 0)], "while the store is down nothing is read, acked or dead"
    retries = [r.getMessage() for r in caplog.records if "ingest cannot start yet" in r.getMessage()]
    assert [m.rsplit("retrying in ", 1)[1] for m in retries] == ["0.1 s", "0.2 s"], "the pause doubles"
    assert all("RatingsStoreError: ratings store at postgresql+psycopg://u:***@db/x failed" in m for m in retries)
    assert redis.xpending(STREAM, GROUP)["pending"] == 0


def test_the_stream_is_trimmed_only_below_what_the_group_acknowledged(
    ingest: Ingest, redis: fakeredis.FakeRedis
) -> None:
    for book in range(3):
        add(redis, user_id="1", book_id=str(book), rating="4")
    ingest.step()
    assert redis.xlen(STREAM) == 1  # the last delivered entry stays as the floor, acknowledged
    add(redis, user_id="1", book_id="7", rating="4")
    add(redis, user_id="1", book_id="8", rating="4")
    redis.xreadgroup(GROUP, "slow", {STREAM: ">"}, count=1)  # book 7 pending at another consumer
    ingest.step()  # reads book 8

    remaining = [fields[b"book_id"] for _, fields in redis.xrange(STREAM)]
    assert remaining == [b"7", b"8"]


def test_replay_sends_dead_letters_back_through_validation(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    add(redis, user_id="1", book_id="10", rating="4.5")
    add(redis, user_id="1", book_id="11", rating="nope")
    ingest.step(Settings().ingest_block_ms)
    assert redis.xlen(DEAD) == 1
    ingest.settings = ingest.settings.with_overrides(rating_max=10.0)  # the scale was fixed meanwhile
    redis.xadd(DEAD, {"user_id": "2", "book_id": "10", "rating": "8", "reason": "rating '8' is outside ..."})

    assert replay(redis, ingest.keys) == 2
    assert redis.xlen(DEAD) == 0
    result = ingest.step()

    assert (result.applied, result.dead) == (1, 1)
    assert live(store) == {("1", "10"): 4.5, ("2", "10"): 8.0}
    assert [x.reason for x in dead_letters(redis, ingest.keys)] == ["rating 'nope' is not a number"]


def test_ingest_dead_lists_the_letters_as_json(
    redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import json

    from bookrec.commands import ingest as command

    redis.xadd(DEAD, {"user_id": "1", "book_id": "x", "rating": "9", "reason": "rating '9' is outside the scale"})
    monkeypatch.setattr(command, "redis_client", lambda settings: redis)

    assert cli.main(["ingest", "dead", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 1 and out["stream"] == DEAD
    assert out["letters"][0]["reason"] == "rating '9' is outside the scale"
    assert out["letters"][0]["fields"] == {"user_id": "1", "book_id": "x", "rating": "9"}


def test_a_bad_ingest_setting_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("BOOKREC_INGEST_CLAIM_S", "soon")
    assert cli.main(["ingest"]) == 2
    assert capsys.readouterr().err.strip() == "bookrec: error: BOOKREC_INGEST_CLAIM_S='soon' is not a whole number"


def test_a_running_ingest_recreates_its_group_after_redis_is_flushed(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    ingest.settings = ingest.settings.with_overrides(ingest_block_ms=20)
    runner = threading.Thread(target=ingest.run)
    runner.start()
    try:
        add(redis, user_id="1", book_id="10", rating="4")
        wait_for(lambda: live(store) == {("1", "10"): 4.0})
        redis.flushdb()
        wait_for(lambda: redis.exists(STREAM) and redis.xinfo_groups(STREAM))
        add(redis, user_id="1", book_id="11", rating="3")
        wait_for(lambda: ("1", "11") in live(store))
    finally:
        ingest.stop.set()
        runner.join(10)
    assert not runner.is_alive(), "stop ends the loop after the current batch"


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_running_ingest_whose_acknowledgement_fails_reads_that_batch_again_and_loses_nothing(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest.settings = ingest.settings.with_overrides(ingest_block_ms=20, ingest_batch=10)
    monkeypatch.setattr(consumer, "BACKOFF_START_S", 0.05)
    acknowledge, acknowledged, failed = ingest._acknowledge, [], []

    def fail_the_second(batch) -> None:
        if len(failed) == 0 and len(acknowledged) == 1:
            failed.append(batch.ids)
            raise redis_errors.ConnectionError("Redis went away mid-MULTI")
        acknowledge(batch)
        acknowledged.append(batch.ids)

    monkeypatch.setattr(ingest, "_acknowledge", fail_the_second)
    sent = {(str(u), str(100 + u)): float(1 + u % 5) for u in range(45)}
    for (user, book), rating in sent.items():
        add(redis, user_id=user, book_id=book, rating=str(int(rating)))
    runner = threading.Thread(target=ingest.run)
    runner.start()
    try:
        wait_for(lambda: redis.xpending(STREAM, GROUP)["pending"] == 0 and live(store) == sent)
    finally:
        ingest.stop.set()
        runner.join(10)

    assert failed and any(set(failed[0]) <= set(ids) for ids in acknowledged[1:]), "the failed batch is read again"
    order = [i for ids in acknowledged for i in ids]
    assert order == sorted(set(order), key=order.index), "no entry acknowledged twice"
    assert len(set(order)) == 45


def test_bookrec_ingest_freezes_what_is_alive_at_its_start_and_collects_the_young_generation_less_often() -> None:
    code = (
        "import gc; from bookrec.commands import ingest; ingest._steady_gc(); "
        "print(gc.get_threshold()[0] == ingest.INGEST_GC_GEN0, gc.get_freeze_count() > 1000)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"], result.stderr
