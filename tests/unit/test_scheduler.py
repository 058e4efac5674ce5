"""`bookrec scheduler` on fakeredis and SQLite: its settings, the horizon of production's ratings, the one retrain
request (a no-op while a retrain runs), the after-ratings check, the rq.cron entries a BookrecWorker can run, what
`bookrec status` reads back, and the process starting again after losing Redis."""

from __future__ import annotations

import json
import logging
import sys
import zlib
from datetime import datetime, timezone
from pathlib import Path

import fakeredis
import pytest
import redis
from croniter import croniter
from rq.cron import get_cron_job_ids
from rq.exceptions import StopRequested
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

import bookrec.producer.client
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.scheduler import process
from bookrec.scheduler.backlog import CREATED_AT, NO_PRODUCTION, SNAPSHOT, Horizon, horizon
from bookrec.scheduler.status import ratings_since_production, schedule_status
from bookrec.scheduler.triggers import AFTER_RATINGS, CRON, RatingsTrigger, ScheduledRetrain, request_retrain
from bookrec.shared import jobs
from bookrec.shared.errors import ConfigError, CorruptVersion
from bookrec.shared.keys import QUEUE_RETRAIN, Keys
from bookrec.shared.ratings import RatingEvent
from bookrec.shared.settings import Settings
from bookrec.worker.jobs import FUNCTIONS
from bookrec.worker.serve import context
from bookrec.worker.serve.rq_worker import BookrecWorker
from tests.conftest import loaded_after
from tests.unit.conftest import run_cli

KEYS = Keys()
MADE = datetime(2026, 11, 28, 4, 15, tzinfo=timezone.utc)
RUNNING = "a-running-retrain"


@pytest.fixture
def models(tmp_path: Path) -> ModelStore:
    """An empty model store whose versions are made at MADE."""
    return ModelStore(tmp_path / "models", clock=lambda: MADE)


@pytest.fixture
def client(redis: fakeredis.FakeRedis, models: ModelStore, trained) -> Client:
    return Client(settings=Settings(model_store=models.root, data_dir=trained.data_dir), connection=redis)


def promote(models: ModelStore, **metadata: object) -> str:
    """Put a version with `metadata` (and no files) in production; return its id."""
    with models.new_version(kind_hint="mult-dae") as writer:
        writer.finish(dict(metadata))
    models.set_production(writer.version, force=True)
    return writer.version


def rate(store: RatingsStore, *users: str, book: str = "b1") -> float:
    """Apply one rating by each of `users`; return the store's newest updated_at afterwards."""
    store.apply([RatingEvent(user, book, 4.0, 1.0) for user in users])
    return store.changed_since(None).newest_updated_at


def retrain_jobs(redis: fakeredis.FakeRedis) -> list[str]:
    return [job_id.decode() for job_id in redis.lrange("rq:queue:retrain", 0, -1)]


# Settings


def test_the_schedule_settings_are_off_by_default_and_read_checked() -> None:
    default = Settings.from_env({})
    chosen = Settings.from_env(
        {"BOOKREC_RETRAIN_CRON": " 0 3 * * * ", "BOOKREC_RETRAIN_AFTER_RATINGS": "500", "BOOKREC_RETRAIN_CHECK_S": "5"}
    )

    assert (default.retrain_cron, default.retrain_after_ratings, default.retrain_check_s) == (None, 0, 60)
    assert (chosen.retrain_cron, chosen.retrain_after_ratings, chosen.retrain_check_s) == ("0 3 * * *", 500, 5)
    assert Settings.from_env({"BOOKREC_RETRAIN_CRON": "  "}).retrain_cron is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BOOKREC_RETRAIN_CRON", "0 3 * *", r"BOOKREC_RETRAIN_CRON='0 3 \* \*' is not a cron expression \(Exactly 5"),
        ("BOOKREC_RETRAIN_CRON", "61 3 * * *", r"'61 3 \* \* \*' is not a cron expression \(.*out of range\)"),
        ("BOOKREC_RETRAIN_CRON", "daily", r"is not a cron expression .*e\.g\. '0 3 \* \* \*'"),
        ("BOOKREC_RETRAIN_AFTER_RATINGS", "-1", "BOOKREC_RETRAIN_AFTER_RATINGS=-1 must be at least 0"),
        ("BOOKREC_RETRAIN_AFTER_RATINGS", "lots", "BOOKREC_RETRAIN_AFTER_RATINGS='lots' is not a whole number"),
        ("BOOKREC_RETRAIN_CHECK_S", "0", "BOOKREC_RETRAIN_CHECK_S=0 must be at least 1"),
    ],
)
def test_a_bad_schedule_setting_is_one_clear_error(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "bookrec: error: nothing to schedule: set BOOKREC_RETRAIN_CRON (a cron expression, e.g. '0 3 * * *')"),
        (
            {"BOOKREC_RETRAIN_CRON": "0 3 * *"},
            "bookrec: error: BOOKREC_RETRAIN_CRON='0 3 * *' is not a cron expression",
        ),
    ],
    ids=["neither-set", "bad-cron"],
)
def test_bookrec_scheduler_without_a_usable_trigger_says_so_and_exits_2(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("BOOKREC_RETRAIN_CRON", "BOOKREC_RETRAIN_AFTER_RATINGS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    code, out, err = run_cli(["scheduler"], capsys)

    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


# The horizon: which ratings are new to production


def test_the_horizon_is_production_s_snapshot_else_its_making_else_none(models: ModelStore) -> None:
    assert horizon(models, None) == Horizon(None, None, NO_PRODUCTION)
    from_file = promote(models, snapshot=None)
    assert horizon(models, from_file) == Horizon(from_file, MADE.timestamp(), CREATED_AT)
    from_store = promote(models, snapshot={"source": "store", "rows": 3, "newest_updated_at": 1764590400.5})
    assert horizon(models, from_store) == Horizon(from_store, 1764590400.5, SNAPSHOT)
    empty_store = promote(models, snapshot={"source": "store", "rows": 0, "newest_updated_at": None})
    assert horizon(models, empty_store) == Horizon(empty_store, None, SNAPSHOT)


def test_a_horizon_that_is_not_a_time_names_the_version_and_the_field(models: ModelStore) -> None:
    version = promote(models, snapshot={"newest_updated_at": "soon"})

    with pytest.raises(CorruptVersion, match=f"model version {version}: .*snapshot.newest_updated_at 'soon' is not"):
        horizon(models, version)


# The one retrain request


def test_a_scheduled_retrain_is_the_json_job_bookrec_retrain_enqueues_under_the_lock(
    client: Client, redis: fakeredis.FakeRedis
) -> None:
    job = request_retrain(client, "test")

    raw = redis.hget(f"rq:job:{job.id}", "data")
    name, _, args, kwargs = json.loads(zlib.decompress(raw))  # RQ's JSONSerializer, not a pickle
    assert name == jobs.RETRAIN and name in FUNCTIONS and QUEUE_RETRAIN in jobs.RUNS_ON[name]
    assert retrain_jobs(redis) == [job.id]
    assert redis.get(KEYS.retrain_lock).decode() == job.id
    redis.delete(KEYS.retrain_lock)
    by_hand = Job.fetch(client.retrain().id, redis, JSONSerializer)  # what `bookrec retrain` enqueues
    assert args == [] and kwargs == by_hand.kwargs and by_hand.origin == job.origin == QUEUE_RETRAIN


def test_a_scheduled_retrain_while_one_runs_is_a_no_op_logged_and_nothing_fails(
    client: Client, redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set(KEYS.retrain_lock, RUNNING)  # what a queued or running retrain holds

    with caplog.at_level(logging.INFO, logger="bookrec.scheduler"):
        assert request_retrain(client, "cron '0 3 * * *'") is None

    assert f"scheduled retrain (cron '0 3 * * *') not enqueued: a retrain is already running (job {RUNNING})" in (
        caplog.text
    )
    assert retrain_jobs(redis) == []
    assert FailedJobRegistry(QUEUE_RETRAIN, connection=redis).count == 0
    assert redis.get(KEYS.retrain_lock).decode() == RUNNING


def test_a_bookrec_worker_runs_the_retrain_a_cron_entry_enqueued(
    client: Client, redis: fakeredis.FakeRedis, fresh_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(fresh_store.store)
    store.set_production(fresh_store.version)
    empty = RatingsStore(f"sqlite:///{tmp_path / 'ratings.db'}")
    empty.upgrade()
    settings = Settings(model_store=store.root, data_dir=fresh_store.data_dir, database_url=empty.url)
    monkeypatch.setattr(context, "_context", None)
    context.install(context.WorkerContext(settings, redis, KEYS, store, None))
    entry = ScheduledRetrain(
        KEYS.cron_job(CRON), QUEUE_RETRAIN, lambda: request_retrain(client, "test"), cron="0 3 * * *"
    )

    job = entry.enqueue(redis)  # what rq.cron's scheduler calls when the entry is due
    BookrecWorker([QUEUE_RETRAIN], connection=redis).work(burst=True, with_scheduler=False)

    assert get_cron_job_ids(entry.name, redis) == [job.id]
    # bookrec's retrain ran (a JSON job resolved through the allowlist) and read the ratings store it names
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert f"the ratings store {empty.url} holds no ratings" in job.latest_result().exc_string
    assert redis.get(KEYS.retrain_lock) is None


# The after-ratings check


def test_the_check_enqueues_once_the_threshold_is_reached_and_not_again_on_the_same_ratings(
    client: Client, redis: fakeredis.FakeRedis, ratings_store: RatingsStore, models: ModelStore
) -> None:
    promote(models, snapshot=None)  # trained on a file at MADE: every rating written since counts
    check = RatingsTrigger(client, ratings_store, models, threshold=3)
    rate(ratings_store, "u1", "u2")

    assert check() is None and retrain_jobs(redis) == []
    newest = rate(ratings_store, "u3")
    job = check()
    assert retrain_jobs(redis) == [job.id]
    assert float(redis.get(KEYS.ratings_mark)) == newest

    redis.delete(KEYS.retrain_lock)  # the retrain ended; its candidate was rejected, production unchanged
    rate(ratings_store, "u4", "u5")
    assert check() is None, "2 ratings since the last scheduled retrain, below the threshold"
    rate(ratings_store, "u6")
    assert check() is not None and len(retrain_jobs(redis)) == 2


def test_ratings_in_production_s_snapshot_do_not_count(
    client: Client, redis: fakeredis.FakeRedis, ratings_store: RatingsStore, models: ModelStore
) -> None:
    newest = rate(ratings_store, "u1", "u2", "u3")
    promote(models, snapshot={"source": "store", "rows": 3, "newest_updated_at": newest})
    check = RatingsTrigger(client, ratings_store, models, threshold=1)

    assert check.count()[0].rows == 0 and check() is None
    rate(ratings_store, "u1", book="b2")
    assert check.count()[0].rows == 1 and check() is not None


def test_a_check_while_redis_or_production_s_metadata_is_unreadable_is_logged_and_fails_nothing(
    client: Client,
    server: fakeredis.FakeServer,
    ratings_store: RatingsStore,
    models: ModelStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    version = promote(models, snapshot=None)
    check = RatingsTrigger(client, ratings_store, models, threshold=1)
    rate(ratings_store, "u1")
    (models.root / version / "metadata.json").write_text("{")
    assert check() is None
    (models.root / version / "metadata.json").unlink()
    promote(models, snapshot=None)
    server.connected = False
    assert check() is None

    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ratings check failed")]
    assert len(failures) == 2
    assert f"model version {version}: metadata.json is not valid JSON" in failures[0]


# The scheduler and what status reads back


def test_the_scheduler_holds_one_rq_cron_entry_per_trigger_under_the_deployment_prefix(
    redis: fakeredis.FakeRedis, ratings_store: RatingsStore, models: ModelStore
) -> None:
    settings = Settings(
        key_prefix="staging:", model_store=models.root, retrain_cron="30 2 * * 1", retrain_after_ratings=7
    )
    scheduler = process.build(settings, Client(settings=settings, connection=redis), ratings_store)

    entries = {e.name: e for e in scheduler.get_jobs()}
    assert scheduler.name.startswith("staging:")
    assert sorted(entries) == ["staging:retrain-after-ratings", "staging:retrain-cron"]
    assert {e.queue_name for e in entries.values()} == {"staging:retrain"}
    assert entries["staging:retrain-cron"].cron == "30 2 * * 1"
    assert entries["staging:retrain-after-ratings"].interval == settings.retrain_check_s
    only_cron = process.build(
        settings.with_overrides(retrain_after_ratings=0), Client(settings=settings, connection=redis), None
    )
    assert [e.name for e in only_cron.get_jobs()] == ["staging:retrain-cron"]


def test_status_reads_each_entry_s_next_due_time_from_rq_cron_s_registry(
    client: Client, redis: fakeredis.FakeRedis, ratings_store: RatingsStore, models: ModelStore
) -> None:
    settings = client.settings.with_overrides(retrain_cron="0 3 * * *", retrain_after_ratings=5, retrain_check_s=30)
    scheduler = process.build(settings, client, ratings_store)
    assert schedule_status(redis, KEYS) is None

    scheduler.register_birth()  # as rq.cron's start() does, then its loop:
    scheduler.enqueue_jobs()  # the interval entry runs at once (no production, no ratings: nothing enqueued)
    scheduler.save()
    status = schedule_status(redis, KEYS)
    due = croniter("0 3 * * *", datetime.now().astimezone()).get_next(datetime).astimezone(timezone.utc)
    check = next(e for e in scheduler.get_jobs() if e.name == KEYS.cron_job(AFTER_RATINGS)).next_enqueue_time

    assert status["schedulers"] == [{"name": scheduler.name, "hostname": scheduler.hostname, "pid": scheduler.pid}]
    assert status["cron"] == "0 3 * * *" and status["next_retrain"] == due.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert status["after_ratings"] == 5 and status["check_every_s"] == 30
    assert status["next_ratings_check"] == check.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert schedule_status(redis, Keys("staging:")) is None, "another deployment's scheduler is not this one's"
    scheduler.register_death()
    assert schedule_status(redis, KEYS) is None


@pytest.fixture
def cli_env(redis: fakeredis.FakeRedis, models: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's Client on fakeredis, the model store `models`; returns the ratings store URL it is given."""
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: redis)
    url = f"sqlite:///{tmp_path / 'ratings.db'}"
    monkeypatch.setenv("BOOKREC_MODEL_STORE", str(models.root))
    monkeypatch.setenv("BOOKREC_DATABASE_URL", url)
    return url


def test_bookrec_status_shows_the_next_scheduled_retrain_and_the_ratings_since_production(
    cli_env: str, redis: fakeredis.FakeRedis, ratings_store: RatingsStore, models: ModelStore, capsys
) -> None:
    version = promote(models, snapshot=None)
    redis.set(KEYS.model_current, version)
    rate(ratings_store, "u1", "u2")
    settings = Settings(model_store=models.root, retrain_cron="0 3 * * *")
    scheduler = process.build(settings, Client(settings=settings, connection=redis), None)
    idle = run_cli(["status", "--json"], capsys)
    scheduler.register_birth()
    second = process.build(settings, Client(settings=settings, connection=redis), None)
    second.register_birth()

    code, out, _ = run_cli(["status", "--json"], capsys)
    text = run_cli(["status"], capsys)[1]

    assert json.loads(idle[1])["scheduler"] is None
    status = json.loads(out)
    assert code == 0 and status["scheduler"]["cron"] == "0 3 * * *" and len(status["scheduler"]["schedulers"]) == 2
    assert status["ratings_since_production"] == {
        "count": 2,
        "since": "2026-11-28T04:15:00.000000Z",
        "basis": CREATED_AT,
        "production": version,
        "error": None,
    }
    assert f"next scheduled retrain: {status['scheduler']['next_retrain']} (cron '0 3 * * *')" in text
    assert "ratings since production snapshot: 2 (written after it was made, 2026-11-28T04:15:00.000000Z" in text
    assert "warning: 2 schedulers run for this deployment" in text


def test_bookrec_status_without_a_ratings_store_says_so_and_creates_none(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(["status"], capsys)

    assert code == 0, err
    assert "next scheduled retrain: none (no scheduler running)" in out
    assert f"ratings since production snapshot: unknown: no ratings store at {cli_env} (" in out
    assert not (tmp_path / "ratings.db").exists()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (
            "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "ratings store at postgresql+psycopg://nobody@127.0.0.1:1/none failed",
        ),
        ("mysql://db/bookrec", "BOOKREC_DATABASE_URL: 'mysql' is not supported"),
    ],
    ids=["unreachable", "unsupported"],
)
def test_status_with_a_store_it_cannot_read_says_why(url: str, error: str, models: ModelStore) -> None:
    backlog = ratings_since_production(Settings(database_url=url, model_store=models.root), None)

    assert backlog["count"] is None and backlog["error"].startswith(error)


def test_status_names_production_s_metadata_when_this_host_cannot_read_it(
    ratings_store: RatingsStore, models: ModelStore
) -> None:
    settings = Settings(database_url=ratings_store.url, model_store=models.root)

    backlog = ratings_since_production(settings, "v20261128T041500000000Z")

    assert backlog["count"] is None and "v20261128T041500000000Z" in backlog["error"]


def test_status_without_the_store_extra_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bookrec.ratings.store", None)  # as if SQLAlchemy were not installed

    backlog = ratings_since_production(Settings(), None)

    assert backlog["count"] is None and backlog["error"].startswith("the ratings store needs bookrec[store]")


# The process


def test_the_scheduler_starts_again_after_losing_redis_or_its_writes_and_stops_on_a_signal(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        StopRequested(),
    ]
    started, waits = [], []

    def start(scheduler: process.RetrainScheduler) -> None:
        started.append(scheduler.name)
        raise outcomes.pop(0)

    monkeypatch.setattr(process.RetrainScheduler, "start", start)
    monkeypatch.setattr(process.time, "sleep", waits.append)

    process.run(client.settings.with_overrides(retrain_cron="0 3 * * *"), client, None)

    assert len(started) == 3 and len(set(started)) == 3, "a new scheduler, under a new name, each time"
    assert waits == [1.0, 2.0]
    assert f"scheduler {started[0]} lost Redis (Connection refused); starting again in 1 s" in caplog.text
    assert f"scheduler {started[1]} lost Redis (command not allowed when used memory" in caplog.text


def test_any_other_redis_error_stops_the_scheduler(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def start(scheduler: process.RetrainScheduler) -> None:
        raise redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    monkeypatch.setattr(process.RetrainScheduler, "start", start)

    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        process.run(client.settings.with_overrides(retrain_cron="0 3 * * *"), client, None)


def test_the_scheduler_loads_no_tensorflow() -> None:
    heavy = {"tensorflow", "keras", "pandas", "numpy"}
    assert loaded_after("bookrec.commands.scheduler, bookrec.scheduler.process", heavy) == []
