"""The delta on fakeredis (its Lua scripts run under lupa as under Redis): the encoding, latest (ts, updated_at) wins
with deletes in any arrival order, the newest stream id, change stamps, claims, the cache write that skips readers
whose delta moved, pruning; then the ingest writing it after its commit, and rebuilding it from the store."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest
from redis.exceptions import ResponseError
from rq import Queue
from rq.serializers import JSONSerializer

from bookrec.ingest import fresh
from bookrec.ingest.consumer import Ingest
from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.ratings.store import RatingsStore
from bookrec.shared import delta
from bookrec.shared import jobs as job_names
from bookrec.shared.keys import QUEUE_FRESH, Keys
from bookrec.shared.ratings import StoredRating
from bookrec.shared.settings import Settings

KEYS = Keys()
STREAM = KEYS.ratings_stream


def row(book: str, rating: float | None, ts: float, updated_at: float, user: str = "u") -> StoredRating:
    return StoredRating(user, book, rating, ts, updated_at)


def stored(redis: fakeredis.FakeRedis, user: str = "u") -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(KEYS.delta(user)).items()}


def test_a_book_s_field_holds_the_store_row_and_the_later_ts_wins_whatever_the_arrival_order(
    redis: fakeredis.FakeRedis,
) -> None:
    delta.write(redis, KEYS, [row("b1", 4.0, 10.0, 100.0), row("b2", None, 11.0, 100.5)], {"u": "7-0"})
    delta.write(redis, KEYS, [row("b1", 2.0, 5.0, 200.0)])  # an older event committed later: the store kept ts 10
    delta.write(redis, KEYS, [row("b2", 3.5, 9.0, 300.0)])  # an older rate after a newer delete: stays deleted

    fields = stored(redis)
    assert (fields["b1"], fields["b2"], fields["*through"]) == ("10.0 100.0 4", "11.0 100.5 -", "7-0")
    assert delta.read(redis, KEYS, ["u"])[0] == delta.ReaderDelta(int(fields["*seq"]), "7-0", ("b1",), ("b2",), (4.0,))

    delta.write(redis, KEYS, [row("b1", None, 12.0, 400.0), row("b2", 5.0, 13.0, 400.0)])  # newer: they win
    now = delta.read(redis, KEYS, ["u"])[0]
    assert (now.rated, now.removed, now.stars) == (("b2",), ("b1",), (5.0,))


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_batch_read_gives_each_reader_s_delta_in_order_over_either_protocol(
    server: fakeredis.FakeServer, protocol: int
) -> None:
    client = fakeredis.FakeRedis(server=server, protocol=protocol)
    delta.write(client, KEYS, [row("b1", 4.5, 10.0, 100.0), row("b2", None, 11.0, 100.5)], {"u": "7-0"})
    delta.write(client, KEYS, [row("c", 2.0, 10.0, 100.0, user="v")])
    seq_u, seq_v = (int(client.hget(KEYS.delta(user), "*seq")) for user in ("u", "v"))

    assert delta.read(client, KEYS, ["v", "nobody", "u"]) == [
        delta.ReaderDelta(seq_v, None, ("c",), (), (2.0,)),
        delta.EMPTY,
        delta.ReaderDelta(seq_u, "7-0", ("b1",), ("b2",), (4.5,)),
    ]
    assert delta.read(client, KEYS, ["u"]) == delta.claim(client, KEYS, ["u"], "job", 60_000)


def test_a_batch_read_meeting_a_key_of_another_type_raises_and_leaves_the_connection_usable(
    redis: fakeredis.FakeRedis,
) -> None:
    redis.set(KEYS.delta("clobbered"), "not a hash")
    delta.write(redis, KEYS, [row("b", 4.0, 10.0, 100.0)])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        delta.read(redis, KEYS, ["clobbered", "u"])
    assert delta.read(redis, KEYS, ["u"])[0].rated == ("b",)


def test_two_rows_of_one_book_in_one_write_the_later_wins_in_either_order() -> None:
    redis = fakeredis.FakeRedis()
    delta.write(redis, KEYS, [row("b", 4.0, 10.0, 100.0), row("b", 2.0, 5.0, 200.0)])
    assert stored(redis)["b"] == "10.0 100.0 4"
    delta.write(redis, KEYS, [row("c", 2.0, 5.0, 200.0), row("c", 4.0, 10.0, 100.0), row("c", 3.0, 7.0, 300.0)])
    assert stored(redis)["c"] == "10.0 100.0 4"


def test_a_reader_with_thousands_of_rows_and_book_ids_holding_spaces_is_written_whole() -> None:
    redis = fakeredis.FakeRedis()  # a rebuild writes every row the store holds past the snapshot, ids as imported
    rows = [row(f"book {n}", float(1 + n % 5), 10.0 + n, 100.0) for n in range(2_500)]
    delta.write(redis, KEYS, rows, {"u": "9-1"})

    fields = stored(redis)
    assert {k: v for k, v in fields.items() if not k.startswith("*")} == {r.book_id: delta.book_value(r) for r in rows}
    assert fields["*through"] == "9-1"
    assert len(delta.read(redis, KEYS, ["u"])[0].rated) == 2_500


def test_on_equal_ts_the_row_the_store_wrote_later_wins() -> None:
    redis = fakeredis.FakeRedis()
    delta.write(redis, KEYS, [row("b", 4.0, 10.0, 200.0)])
    delta.write(redis, KEYS, [row("b", 1.0, 10.0, 150.0)])
    assert stored(redis)["b"] == "10.0 200.0 4"
    delta.write(redis, KEYS, [row("b", 1.0, 10.0, 250.0)])
    assert stored(redis)["b"] == "10.0 250.0 1"


def test_through_keeps_the_newest_stream_id_compared_as_numbers(redis: fakeredis.FakeRedis) -> None:
    delta.write(redis, KEYS, [], {"u": "9-5"})
    delta.write(redis, KEYS, [], {"u": "10-0"})  # "10-0" < "9-5" as text, newer as an id
    delta.write(redis, KEYS, [], {"u": "9-7"})
    assert stored(redis)["*through"] == "10-0"


def test_the_change_stamp_moves_on_every_change_and_not_on_a_repeat(redis: fakeredis.FakeRedis) -> None:
    batch = [row("b1", 4.0, 10.0, 100.0)]
    delta.write(redis, KEYS, batch, {"u": "5-0"})
    first = delta.read(redis, KEYS, ["u"])[0].seq
    delta.write(redis, KEYS, batch, {"u": "5-0"})  # a redelivered batch writes the same rows again
    assert delta.read(redis, KEYS, ["u"])[0].seq == first
    delta.write(redis, KEYS, [], {"u": "6-0"})  # an event that changed no row still moves the stamp (read your writes)
    assert delta.read(redis, KEYS, ["u"])[0].seq > first


def test_a_reader_without_a_delta_reads_as_empty(redis: fakeredis.FakeRedis) -> None:
    delta.write(redis, KEYS, [row("b1", 4.0, 10.0, 100.0, user="a")], {"a": "1-0"})
    found = delta.read(redis, KEYS, ["nobody", "a"])
    assert found[0] == delta.EMPTY == delta.ReaderDelta()
    assert found[1].rated == ("b1",) and found[1].seq > 0


def test_a_list_computed_before_the_delta_moved_is_not_written_and_a_current_one_is(redis: fakeredis.FakeRedis) -> None:
    delta.write(redis, KEYS, [row("b1", 4.0, 10.0, 100.0)], {"u": "5-0"})
    seen = delta.read(redis, KEYS, ["u"])[0].seq
    delta.write(redis, KEYS, [row("b2", 4.0, 11.0, 101.0)], {"u": "6-0"})  # a rating lands while it computes

    assert delta.write_lists(redis, KEYS, [("u", "stale", seen), ("new", "fine", 0)], 10, None, "j") == (None, [0])
    assert redis.get(KEYS.recs("u")) is None and redis.get(KEYS.recs("new")) == b"fine"
    assert not redis.exists(KEYS.delta("new")), "no delta is created for a reader without one"

    current = delta.read(redis, KEYS, ["u"])[0].seq
    assert delta.write_lists(redis, KEYS, [("u", "current", current)], 10, 60, "j") == (None, [])
    assert redis.get(KEYS.recs("u")) == b"current" and 0 < redis.ttl(KEYS.recs("u")) <= 60
    assert stored(redis)["*listed"] == str(current)


def test_lists_shorter_than_cache_n_are_not_written(redis: fakeredis.FakeRedis) -> None:
    redis.set(KEYS.cache_n, 20)
    assert delta.write_lists(redis, KEYS, [("u", "short", 0)], 10, None, "j") == (20, [])
    assert redis.get(KEYS.recs("u")) is None
    assert delta.write_lists(redis, KEYS, [("u", "long", 0)], 30, None, "j", ("done", 1, 99)) == (None, [])
    assert (redis.get(KEYS.cache_n), redis.get("done"), redis.get(KEYS.recs("u"))) == (b"30", b"1", b"long")


def test_a_reader_is_claimed_by_one_job_at_a_time_and_again_by_the_same_job_run_again(
    redis: fakeredis.FakeRedis,
) -> None:
    delta.write(redis, KEYS, [row("b1", 4.0, 10.0, 100.0)], {"u": "5-0"})
    (mine,) = delta.claim(redis, KEYS, ["u"], "job-1", 60_000)
    assert mine is not None and mine.rated == ("b1",)
    assert delta.claim(redis, KEYS, ["u", "nobody"], "job-2", 60_000) == [None, None]
    assert delta.claim(redis, KEYS, ["u"], "job-1", 60_000)[0] == mine, "a job killed and run again claims it again"

    delta.write_lists(redis, KEYS, [("u", "list", mine.seq)], 10, None, "job-1")
    assert "*claim" not in stored(redis)
    assert delta.claim(redis, KEYS, ["u"], "job-2", 60_000) == [None], "its list follows its delta: nothing to do"


def test_a_claim_past_its_lease_is_taken_by_another_job(redis: fakeredis.FakeRedis) -> None:
    delta.write(redis, KEYS, [row("b1", 4.0, 10.0, 100.0)], {"u": "5-0"})
    delta.claim(redis, KEYS, ["u"], "dead-job", 0)
    assert delta.claim(redis, KEYS, ["u"], "job-2", 60_000)[0] is not None
    assert stored(redis)["*claim"].startswith("job-2 ")


def test_pruning_drops_the_rows_a_version_covers_and_deletes_deltas_left_empty(redis: fakeredis.FakeRedis) -> None:
    delta.write(redis, KEYS, [row("old", 4.0, 1.0, 100.0), row("new", 4.0, 2.0, 300.0)], {"u": "5-0"})
    delta.write(redis, KEYS, [row("old", None, 1.0, 100.0, user="v")], {"v": "4-0"})

    assert delta.prune(redis, [KEYS.delta("u"), KEYS.delta("v"), KEYS.delta("none")], 200.0) == (2, 1)
    assert set(stored(redis)) == {"new", "*through", "*seq"}
    assert not redis.exists(KEYS.delta("v"))


# ---------------------------------------------------------------- the ingest's side


@pytest.fixture
def ingest(redis: fakeredis.FakeRedis, store: RatingsStore, tmp_path: Path) -> Ingest:
    consumer = Ingest(redis, store, Settings(model_store=tmp_path / "models", ingest_batch=50), name="unit-a")
    consumer.ensure_group()
    return consumer


def fresh_asked(redis: fakeredis.FakeRedis) -> tuple[list[str], int]:
    """The readers waiting in the pending set, and how many fresh jobs (each taking pending readers) are queued."""
    queue = Queue(KEYS.queue(QUEUE_FRESH), connection=redis, serializer=JSONSerializer)
    jobs = [job for job in queue.get_jobs() if job.func_name == job_names.FRESH and job.kwargs == {}]
    return [reader.decode() for reader in redis.zrange(KEYS.fresh_pending, 0, -1)], len(jobs)


def test_the_ingest_writes_the_committed_rows_and_pends_their_readers_in_the_multi_that_acks(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    redis.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "4", "ts": "100"})
    redis.xadd(STREAM, {"user_id": "1", "book_id": "11", "rating": "5", "ts": "100"})
    last = redis.xadd(STREAM, {"user_id": "1", "book_id": "10", "op": "delete", "ts": "50"}).decode()  # older: loses
    redis.xadd(STREAM, {"user_id": "2", "book_id": "10", "rating": "9"})  # bad: dead-lettered, no delta
    ingest.step()

    one = delta.read(redis, KEYS, ["1"])[0]
    assert (sorted(one.rated), one.removed, one.through) == (["10", "11"], (), last)
    assert not redis.exists(KEYS.delta("2"))
    assert fresh_asked(redis) == (["1"], 1)

    store_rows = {(r.user_id, r.book_id): r for r in store.rows_since(0)[0]}
    assert stored(redis, "1")["10"] == delta.book_value(store_rows[("1", "10")])


def test_a_redelivered_batch_writes_the_same_rows_again_so_a_crash_before_the_ack_loses_nothing(
    ingest: Ingest, redis: fakeredis.FakeRedis, store: RatingsStore
) -> None:
    first = redis.xadd(STREAM, {"user_id": "1", "book_id": "10", "rating": "4"}).decode()
    store.apply(ingest._parse(ingest.read())[0][0][:1])  # committed, then "crashed" before the MULTI
    assert not redis.exists(KEYS.delta("1"))

    redelivered = ingest.read()  # this consumer's own pending entry comes back
    result = ingest.process(redelivered)

    assert (result.applied, result.duplicate) == (0, 1)
    assert delta.read(redis, KEYS, ["1"])[0].rated == ("10",) and stored(redis, "1")["*through"] == first
    assert fresh_asked(redis) == (["1"], 1)


def test_rebuilding_writes_what_production_does_not_cover_and_asks_for_those_lists(
    redis: fakeredis.FakeRedis, store: RatingsStore, trained, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(trained.store, tmp_path / "models")
    models = ModelStore(tmp_path / "models")
    promote(models, redis, KEYS, trained.version)
    metadata_path = tmp_path / "models" / trained.version / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    store.import_ratings([("old", "b", 4.0, 1.0)])
    covered = store.rows_since(0)[0][0].updated_at
    metadata["snapshot"] = {"source": "store", "newest_updated_at": covered + fresh.PRUNE_MARGIN_S}
    metadata_path.write_text(json.dumps(metadata))
    from bookrec.shared.ratings import RatingEvent

    store.apply([RatingEvent("new", "b", 5.0, 2.0, stream_id="9-0"), RatingEvent("new", "c", None, 2.0, "delete")])
    redis.delete(KEYS.queue(QUEUE_FRESH))

    deltas = fresh.Deltas(redis, store, Settings(model_store=tmp_path / "models"))
    assert deltas.rebuild() == 2

    assert not redis.exists(KEYS.delta("old")), "a row the version covers is not in the delta"
    rebuilt = delta.read(redis, KEYS, ["new"])[0]
    assert (rebuilt.rated, rebuilt.removed, rebuilt.through) == (("b",), ("c",), "9-0")
    assert fresh_asked(redis) == (["new"], 1)

    redis.set(KEYS.delta_pruned, "an-older-version")
    assert deltas.upkeep_if_due() == (0, 0), "no worker serves an older version, so it prunes (nothing covered)"
    assert redis.get(KEYS.delta_pruned) == trained.version.encode()


def test_pruning_waits_until_every_serving_worker_serves_production(
    redis: fakeredis.FakeRedis, store: RatingsStore, tmp_path: Path
) -> None:
    from bookrec.shared import worker_state

    deltas = fresh.Deltas(redis, store, Settings(model_store=tmp_path / "models"))
    redis.set(KEYS.model_current, "v-new")
    worker_state.publish(redis, KEYS, "w1", "v-old", "v-new", ["recommend"])
    assert deltas.upkeep_if_due() is None and redis.get(KEYS.delta_pruned) is None


def test_covered_until_is_the_snapshot_s_newest_row_or_a_file_trained_version_s_creation() -> None:
    assert fresh.covered_until({"snapshot": {"newest_updated_at": 123.5}}) == 123.5
    assert fresh.covered_until({"snapshot": {"newest_updated_at": None}}) is None
    assert fresh.covered_until({"snapshot": None, "created_at": "2026-01-01T00:00:00.000000Z"}) == 1767225600.0


def test_a_book_field_someone_else_wrote_is_replaced_by_the_store_s_row_and_pruned(redis: fakeredis.FakeRedis) -> None:
    redis.hset(KEYS.delta("u"), mapping={"b": "garbage", "c": "also garbage"})
    delta.write(redis, KEYS, [row("b", 4.0, 10.0, 100.0)])
    assert stored(redis)["b"] == "10.0 100.0 4"
    assert delta.prune(redis, [KEYS.delta("u")], 50.0) == (1, 0) and "c" not in stored(redis)
