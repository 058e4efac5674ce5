"""Deployments under different BOOKREC_KEY_PREFIXes share nothing; the demo never touches a deployment;
readers take their n from one entry; `bookrec get` of a reader without a list exits 8 (fakeredis)."""

from __future__ import annotations

import json

import fakeredis
import pytest
from rq import Queue
from rq.serializers import JSONSerializer

import bookrec.producer.client
from bookrec import cli
from bookrec.commands import demo
from bookrec.producer import Client
from bookrec.shared.errors import BookrecError, ConfigError, ValidationError
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN, Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.rq_worker import BookrecWorker


@pytest.fixture
def redis(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    """The fakeredis every Client built in the test talks to."""
    fake = fakeredis.FakeRedis()
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: fake)
    return fake


def client_under(prefix: str) -> Client:
    return Client(settings=Settings(key_prefix=prefix))


def entry(user_id: int, n: int, version: str = "v1") -> dict:
    items = [
        {"book_id": b, "score": float(n - b), "title": None, "authors": None, "year": None, "image_url": None}
        for b in range(n)
    ]
    return {"user_id": user_id, "model_version": version, "generated_at": "2026-12-01T00:00:00.000000Z", "n": n,
            "fallback": None, "items": items}  # fmt: skip


def test_the_default_deployment_keeps_the_bare_queue_names_and_any_other_prefix_owns_its_own() -> None:
    assert [Keys().queue(q) for q in (QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN)] == [
        "recommend",
        "refresh",
        "retrain",
    ]
    assert Keys("staging:").queue(QUEUE_RECOMMEND) == "staging:recommend"
    with pytest.raises(ValueError, match="unknown queue 'recomend'"):
        Keys().queue("recomend")


@pytest.mark.parametrize("prefix", ["a,b:", "a b:", "bookrec*:", ""])
def test_a_prefix_that_cannot_name_queues_or_scan_patterns_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="BOOKREC_KEY_PREFIX"):
        Settings.from_env({"BOOKREC_KEY_PREFIX": prefix})


def test_each_deployment_enqueues_on_its_own_queues_only(redis: fakeredis.FakeRedis) -> None:
    client_under("bookrec:").recommend([1])
    client_under("staging:").recommend([2, 3])
    client_under("staging:").refresh()

    def count(name: str) -> int:
        return Queue(name, connection=redis, serializer=JSONSerializer).count

    assert (count("recommend"), count("staging:recommend"), count("staging:refresh"), count("refresh")) == (1, 1, 1, 0)


def test_status_lists_only_this_deployment_s_workers_and_queues(redis: fakeredis.FakeRedis) -> None:
    for name, queues in (("prod-0", ["recommend", "refresh"]), ("staging-0", ["staging:recommend", "staging:refresh"])):
        BookrecWorker(queues, connection=redis, name=name).register_birth()
    Queue("recommend", connection=redis, serializer=JSONSerializer).enqueue_many(
        [Queue.prepare_data("worker.jobs.recommend", kwargs={"user_ids": [1]})]
    )

    staging = client_under("staging:").status()
    production = client_under("bookrec:").status()

    assert [w["name"] for w in staging["workers"]] == ["staging-0"]
    assert [w["name"] for w in production["workers"]] == ["prod-0"]
    assert staging["queues"]["recommend"] == {"rq_name": "staging:recommend", "queued": 0, "failed": 0, "workers": 1}
    assert production["queues"]["recommend"] == {"rq_name": "recommend", "queued": 1, "failed": 0, "workers": 1}


def test_get_with_n_takes_the_first_n_items_of_the_one_entry(redis: fakeredis.FakeRedis) -> None:
    redis.set(Keys().recs("5"), json.dumps(entry(5, 30)))
    client = client_under("bookrec:")

    top5, whole = client.get(5, n=5), client.get(5)

    assert [i["book_id"] for i in top5.items] == [0, 1, 2, 3, 4] and top5.entry["n"] == 30
    assert len(whole.items) == 30
    assert client.get(5, n=31) is None  # computed shorter than asked: request that length
    with pytest.raises(ValidationError, match="n must be a whole number from 1 to 100"):
        client.get(5, n=0)


def test_a_deployment_never_reads_another_s_cache(redis: fakeredis.FakeRedis) -> None:
    redis.set(Keys("staging:").recs("5"), json.dumps(entry(5, 10)))

    assert client_under("bookrec:").get(5) is None
    assert client_under("staging:").get(5) is not None


def test_bookrec_get_of_a_reader_without_a_list_exits_8_with_one_line(
    redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture
) -> None:
    code = cli.main(["get", "no-such-reader"])

    out, err = capsys.readouterr()
    assert (code, out) == (8, "")
    assert err == (
        "bookrec: error: no cached list for user no-such-reader; request one with `bookrec recommend no-such-reader`\n"
    )


def test_bookrec_get_of_a_cached_reader_exits_0(redis: fakeredis.FakeRedis, capsys: pytest.CaptureFixture) -> None:
    redis.set(Keys().recs("5"), json.dumps(entry(5, 10)))

    assert cli.main(["get", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["user_id"] == 5


def test_the_demo_claims_its_own_prefix_and_leaves_a_live_deployment_alone() -> None:
    redis = fakeredis.FakeRedis()
    live = {Keys().model_current: b"v-production", Keys().recs("1"): b"{}", "rq:queue:recommend": b"x"}
    for key, value in live.items():
        redis.set(key, value)
    redis.set(demo.DEMO_KEYS.recs("1"), b"from an earlier demo")
    redis.set(demo.MARK_KEY, demo.MARK)

    demo.claim_prefix(redis)

    assert {k: redis.get(k) for k in live} == live
    assert sorted(redis.scan_iter(match="demo:*")) == [demo.MARK_KEY.encode()]
    assert Settings.from_env({"BOOKREC_KEY_PREFIX": demo.DEMO_PREFIX}).key_prefix == "demo:"


def test_the_demo_refuses_a_prefix_holding_keys_it_did_not_write() -> None:
    redis = fakeredis.FakeRedis()
    redis.set(demo.DEMO_KEYS.model_current, b"v-someone-elses")

    with pytest.raises(BookrecError, match="1 key\\(s\\) under 'demo:' that the demo did not write"):
        demo.claim_prefix(redis)
    assert redis.get(demo.DEMO_KEYS.model_current) == b"v-someone-elses"
