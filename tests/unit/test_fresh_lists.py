"""Fresh lists on the worker's and the client's side (fakeredis, the session's trained version): a reader's current
history is the version's plus their delta, the fresh job recomputes a reader once however many jobs name them, each
entry says how fresh it is (`ratings_through`), and `Client.rate(wait=True)` / `bookrec rate --wait` return once
the list includes the rating."""

from __future__ import annotations

import json
import threading
import time

import fakeredis
import numpy as np
import pytest
import tensorflow as tf

import bookrec.producer.client
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared import delta, pending
from bookrec.shared.entries import entry_problem, parse_entry
from bookrec.shared.errors import MalformedEntry, Timeout
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import StoredRating
from bookrec.shared.settings import Settings
from bookrec.worker import jobs
from bookrec.worker.learn import artifacts, export
from bookrec.worker.serve.runtime import ModelRuntime, current_history
from tests.unit.conftest import install_context, run_cli

KEYS = Keys()


def book_ids(entry_json: str) -> list[str]:
    return [str(item["book_id"]) for item in json.loads(entry_json)["items"]]


def rated(redis: fakeredis.FakeRedis, user: str, book: str, stream_id: str, rating: float | None = 4.0) -> None:
    """What the ingest writes for one committed event of `user` on `book`."""
    now = time.time()
    delta.write(redis, KEYS, [StoredRating(user, book, rating, now, now)], {user: stream_id})


def test_a_book_rated_after_the_snapshot_leaves_a_known_reader_s_list(runtime: ModelRuntime) -> None:
    user = runtime.user_map.to_list()[0]
    (before,) = runtime.recommend([user], 10).entries
    top = book_ids(before)[0]

    (after,) = runtime.recommend([user], 10, [delta.ReaderDelta(1, "5-0", rated=(top,), stars=(5.0,))]).entries

    assert top not in book_ids(after) and len(book_ids(after)) == 10
    assert json.loads(after)["ratings_through"] == "5-0" and json.loads(before)["ratings_through"] is None


def test_a_new_reader_gets_a_personalised_list_from_their_first_rating_for_a_history_based_kind(
    runtime: ModelRuntime,
) -> None:
    assert runtime.history_based, "the session's default version is mult-dae"
    (before,) = runtime.recommend(["brand-new"], 10).entries
    assert json.loads(before)["fallback"] == "popular", "no rating yet: the popular fallback"
    first = book_ids(before)[0]

    (after,) = runtime.recommend(
        ["brand-new"], 10, [delta.ReaderDelta(1, "5-0", rated=(first, "no-such-book"), stars=(5.0, 4.0))]
    ).entries

    assert json.loads(after)["fallback"] is None
    assert first not in book_ids(after) and len(book_ids(after)) == 10


def test_a_rating_moves_a_known_reader_s_list_for_a_history_based_kind(runtime: ModelRuntime) -> None:
    reader = runtime.user_map.to_list()[0]
    (before,) = runtime.recommend([reader], 10).entries
    top = book_ids(before)[:3]

    (after,) = runtime.recommend(
        [reader], 10, [delta.ReaderDelta(1, "5-0", rated=tuple(top), stars=(5.0,) * 3)]
    ).entries

    assert not set(top) & set(book_ids(after))
    assert [i["score"] for i in json.loads(after)["items"]] != [i["score"] for i in json.loads(before)["items"]][3:]


def test_the_current_history_adds_the_delta_s_books_at_its_ratings_and_drops_the_removed_ones(
    runtime: ModelRuntime,
) -> None:
    users = runtime.user_map.to_list()[:2]
    seen_rows = runtime.seen_users.index(users)
    own_rows, own, own_ratings = runtime.seen.rated_rows(seen_rows[:1])
    ids = runtime.item_map.to_list()
    gone, again, kept = own[0], own[1], own[2:]
    outside = next(i for i in range(runtime.n_items) if i not in own)
    deltas = [
        delta.ReaderDelta(1, None, rated=(ids[outside], ids[again]), removed=(ids[gone],), stars=(5.0, 0.5)),
        delta.EMPTY,
    ]

    rows, items, ratings = current_history(runtime.seen, seen_rows, deltas, runtime.item_map)

    assert rows.dtype == items.dtype == np.int32 and ratings.dtype == np.float32
    mine = dict(zip(items[rows == 0].tolist(), ratings[rows == 0].tolist()))
    assert mine == {**dict(zip(kept.tolist(), own_ratings[2:].tolist())), outside: 5.0, again: 0.5}
    assert len(np.unique(own_ratings)) > 1, "the seen sets keep each book's rating"
    assert sorted(items[rows == 1].tolist()) == sorted(runtime.seen.items_of(int(seen_rows[1])).tolist())


class BooksOnly(tf.Module):
    """The history signature of versions saved before it took ratings: readers' books only."""

    def __init__(self, module) -> None:
        super().__init__()
        self.inner = module

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="history_item"),
            tf.TensorSpec([None], tf.int32, name="history_row"),
            tf.TensorSpec([], tf.int32, name="n_readers"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def recommend_history(self, history_item, history_row, n_readers, k):
        ones = tf.ones_like(history_item, tf.float32)
        return self.inner.recommend_history(history_item, history_row, ones, n_readers, k)


def test_a_version_saved_before_the_history_signature_took_ratings_still_serves(trained, runtime, tmp_path) -> None:
    old, module = tmp_path / "books-only", BooksOnly(runtime.module)
    tf.saved_model.save(module, str(old), signatures={"recommend_history": module.recommend_history})
    store = ModelStore(trained.store)
    loaded = export.load(old)
    served = ModelRuntime(
        trained.version, store.metadata(trained.version), loaded, artifacts.read(store.verify(trained.version))
    )
    users = runtime.user_map.to_list()[:3]

    assert not export.history_takes_ratings(loaded) and export.history_takes_ratings(runtime.module)
    assert [book_ids(e) for e in served.recommend(users, 10).entries] == [
        book_ids(e) for e in runtime.recommend(users, 10).entries
    ], "the session's version is mult-dae, which reads 0/1 histories"


@pytest.fixture
def worker(trained, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch):
    return install_context(trained, runtime, redis, monkeypatch, ["fresh", "recommend", "refresh"])


def test_a_fresh_job_recomputes_a_reader_once_however_many_jobs_name_them(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis
) -> None:
    user = runtime.user_map.to_list()[3]
    jobs.recommend([user], n=10)
    top = book_ids(redis.get(KEYS.recs(user)).decode())[0]
    rated(redis, user, top, "1700000000000-0")

    results = [jobs.fresh([user, "nobody"]) for _ in range(3)]

    assert [r["recomputed"] for r in results] == [1, 0, 0]
    entry = json.loads(redis.get(KEYS.recs(user)))
    assert top not in book_ids(json.dumps(entry)) and entry["ratings_through"] == "1700000000000-0"
    rated(redis, user, "another", "1700000000001-0")
    assert jobs.fresh([user])["recomputed"] == 1


def test_a_fresh_job_leaves_a_reader_another_job_holds_to_it_and_hands_nothing_on(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis
) -> None:
    user = runtime.user_map.to_list()[5]
    rated(redis, user, "some-book", "1700000000000-0")
    assert delta.claim(redis, KEYS, [user], "another-job", 60_000)[0] is not None

    result = jobs.fresh([user])

    assert (result["recomputed"], result["rounds"]) == (0, 0)
    assert redis.get(KEYS.recs(user)) is None
    assert redis.llen(f"rq:queue:{KEYS.queue('fresh')}") == 0, "the claiming job writes it; nothing is handed on"


def test_pending_readers_ask_for_one_fresh_job_until_it_takes_them(redis: fakeredis.FakeRedis) -> None:
    assert pending.add(redis, KEYS, ["a"]) == 1, "no fresh job queued: ask for one"
    assert pending.add(redis, KEYS, ["b", "a"]) == 0, "one is queued and has not taken anyone: it will take b too"

    assert pending.take(redis, KEYS, "job-1", 1000, 60_000) == (["a", "b"], 0)
    assert pending.add(redis, KEYS, ["a"]) == 1, "the job took them: a later rating asks for a new job"
    assert pending.take(redis, KEYS, "job-1", 1000, 60_000) == (["a", "b"], 1), "run again: the same readers"
    pending.release(redis, KEYS, "job-1")
    assert pending.take(redis, KEYS, "job-1", 1000, 60_000, first=False) == (["a"], 0), "job-1 takes again"
    assert pending.add(redis, KEYS, ["c"]) == 0, "the job asked for by a's rating is still queued: it will take c"
    pending.release(redis, KEYS, "job-1")
    assert pending.take(redis, KEYS, "job-2", 1000, 60_000) == (["c"], 0)
    assert pending.add(redis, KEYS, ["d"]) == 1, "job-2's first take: a later rating asks for a new job"


def test_a_fresh_job_run_again_after_it_was_killed_recomputes_the_readers_it_had_taken(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = runtime.user_map.to_list()[6:9]
    for i, user in enumerate(users):
        rated(redis, user, runtime.item_map.to_list()[i], f"170000000000{i}-0")
    pending.add(redis, KEYS, users)
    pending.take(redis, KEYS, "killed-job", 1000, 60_000)  # then the worker died
    assert redis.zcard(KEYS.fresh_pending) == 0
    monkeypatch.setattr(jobs, "get_current_job", lambda: type("Job", (), {"id": "killed-job"})())

    result = jobs.fresh()

    assert (result["users"], result["recomputed"], result["waiting"]) == (3, 3, 0)
    assert [parse_entry(redis.get(KEYS.recs(u)))["ratings_through"] for u in users] == [
        f"170000000000{i}-0" for i in range(3)
    ]
    assert not redis.exists(KEYS.fresh_taken("killed-job")), "done: nothing left under its id"


def test_a_fresh_job_takes_at_most_1000_pending_readers_and_wakes_another_for_the_rest(
    worker, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending.add(redis, KEYS, [f"reader-{i}" for i in range(1200)])
    monkeypatch.setattr(jobs, "TAKE_AGAIN_S", 0.0)  # one take per job

    result = jobs.fresh()

    assert (result["users"], result["takes"], result["waiting"]) == (1000, 1, 200)
    assert redis.llen(f"rq:queue:{KEYS.queue('fresh')}") == 1, "another job for the 200 left, for any worker"
    assert jobs.fresh()["users"] == 200


def test_a_fresh_job_takes_again_what_arrived_while_it_ran_within_its_time(
    worker, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending.add(redis, KEYS, [f"reader-{i}" for i in range(1200)])
    monkeypatch.setattr(jobs, "TAKE_AGAIN_S", 60.0)

    result = jobs.fresh()

    assert (result["users"], result["takes"], result["waiting"]) == (1200, 2, 0)
    assert redis.zcard(KEYS.fresh_pending) == 0
    assert list(redis.scan_iter(match=KEYS.fresh_taken("*"))) == [], "each take released once its lists were cached"


def test_a_recommend_job_excludes_the_delta_and_says_how_fresh_it_is(
    worker, runtime: ModelRuntime, redis: fakeredis.FakeRedis
) -> None:
    user = runtime.user_map.to_list()[4]
    jobs.recommend([user], n=10)
    top = book_ids(redis.get(KEYS.recs(user)).decode())[0]
    rated(redis, user, top, "1700000000000-3")

    jobs.recommend([user], n=10)

    entry = parse_entry(redis.get(KEYS.recs(user)))
    assert top not in [str(item["book_id"]) for item in entry["items"]]
    assert entry["ratings_through"] == "1700000000000-3"
    assert jobs.fresh([user])["recomputed"] == 0, "the recommend job's list already follows the delta"


def test_ratings_through_is_optional_and_must_be_a_stream_id() -> None:
    entry = {"user_id": 1, "model_version": "v", "generated_at": "t", "n": 10, "fallback": None, "items": []}
    assert entry_problem(entry) is None
    assert entry_problem({**entry, "ratings_through": "17-0"}) is None
    assert entry_problem({**entry, "ratings_through": "soon"}) == "ratings_through is 'soon'"
    with pytest.raises(MalformedEntry, match="ratings_through is 17"):
        parse_entry(json.dumps({**entry, "ratings_through": 17}))


# ---------------------------------------------------------------- read your writes


@pytest.fixture
def client_redis(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    fake = fakeredis.FakeRedis()
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: fake)
    for name in ("BOOKREC_KEY_PREFIX", "BOOKREC_RATING_MIN", "BOOKREC_RATING_MAX"):
        monkeypatch.delenv(name, raising=False)
    return fake


def answer_ratings(redis: fakeredis.FakeRedis, lag_s: float = 0.05) -> threading.Thread:
    """A stand-in for ingest and worker: once an event is on the stream, cache the reader's list saying it is in."""

    def work() -> None:
        deadline = time.monotonic() + 5
        while not redis.xlen(KEYS.ratings_stream) and time.monotonic() < deadline:
            time.sleep(0.005)
        ((stream_id, fields),) = redis.xrange(KEYS.ratings_stream)
        time.sleep(lag_s)
        entry = {"user_id": 42, "model_version": "v1", "generated_at": "t", "n": 10, "fallback": None}
        items = [{"book_id": 9, "score": 1.0, "title": "T", "authors": "A", "year": 2001, "image_url": None}]
        entry.update(ratings_through=stream_id.decode(), items=items)
        redis.set(KEYS.recs(fields[b"user_id"].decode()), json.dumps(entry))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_rate_with_wait_returns_the_list_once_it_includes_the_rating(client_redis: fakeredis.FakeRedis) -> None:
    client = Client(settings=Settings())
    client_redis.set(
        KEYS.recs("42"),
        json.dumps(
            {
                "user_id": 42,
                "model_version": "v1",
                "generated_at": "t",
                "n": 10,
                "fallback": None,
                "ratings_through": "1-0",
                "items": [],
            }
        ),
    )
    answer_ratings(client_redis)

    entry = client.rate(42, 8, 4, wait=True, timeout=5)

    ((stream_id, _),) = client_redis.xrange(KEYS.ratings_stream)
    assert entry["ratings_through"] == stream_id.decode() and entry["items"][0]["book_id"] == 9


def test_rate_with_wait_times_out_naming_what_to_check(client_redis: fakeredis.FakeRedis) -> None:
    client = Client(settings=Settings())
    started = time.monotonic()
    with pytest.raises(Timeout, match=r"did not include rating event \d+-\d+ within 0.2 s .*bookrec ingest"):
        client.unrate(42, 8, wait=True, timeout=0.2)
    assert time.monotonic() - started < 1.0


def test_bookrec_rate_wait_prints_the_new_list_as_recommend_wait_does(
    client_redis: fakeredis.FakeRedis, capsys
) -> None:
    answer_ratings(client_redis)
    code, out, err = run_cli(["rate", "42", "8", "4", "--wait", "--timeout", "5"], capsys)
    ((stream_id, _),) = client_redis.xrange(KEYS.ratings_stream)
    assert code == 0, err
    assert out.startswith(f"user 42 rated book 8 4: bookrec:ratings {stream_id.decode()}\nuser 42: top 1 by model v1")
    assert "no worker listens on 'fresh'" in err


def test_bookrec_rate_wait_exits_7_when_the_list_does_not_follow(client_redis: fakeredis.FakeRedis, capsys) -> None:
    code, out, err = run_cli(["unrate", "42", "8", "--wait", "--timeout", "0.1", "--json"], capsys)
    assert code == 7 and out == ""
    assert err.splitlines()[-1].startswith("bookrec: error: the cached list of user 42 did not include rating event")


def test_status_counts_the_readers_waiting_for_a_fresh_recompute(
    client_redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture
) -> None:
    assert Client().status()["fresh_pending"] == 0
    pending.add(client_redis, KEYS, ["a", "b"])

    assert Client().status()["fresh_pending"] == 2
    code, out, _ = run_cli(["status"], capsys)
    assert code == 0 and "readers waiting for a fresh recompute: 2" in out
