"""A real `bookrec scheduler` process with a real trainer on the real Redis and a SQLite ratings store: ratings past
BOOKREC_RETRAIN_AFTER_RATINGS make it enqueue a retrain the trainer runs, and not again on the same ratings; while a
retrain runs, the scheduled one is a logged no-op, and the next check after it ends enqueues; SIGTERM stops it
cleanly. The after-ratings trigger checks every second, so each test awaits an event, never a wall-clock cron time."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from rq.cron import get_cron_job_ids
from rq.job import Job
from rq.serializers import JSONSerializer

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.ratings.store import RatingsStore
from bookrec.scheduler.status import schedulers
from bookrec.scheduler.triggers import AFTER_RATINGS
from bookrec.shared import jobs
from bookrec.shared.errors import JobFailed, ValidationError
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import RatingEvent
from tests.conftest import REPO, TrainedStore
from tests.integration.test_retrain_operator import TIMEOUT, bookrec, client_for, wait_for

pytestmark = pytest.mark.integration
KEYS = Keys()
CHECK = KEYS.cron_job(AFTER_RATINGS)


@dataclass
class SchedulerProcess:
    """One `bookrec scheduler` subprocess and its log."""

    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM it and return its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def database(tmp_path: Path, fresh_store: TrainedStore) -> Iterator[tuple[str, RatingsStore, int]]:
    """(URL, store, rows): a SQLite ratings store holding the catalogue's ratings.csv, imported after production
    was made (so every row is new to it)."""
    url = f"sqlite:///{tmp_path / 'ratings.db'}"
    store = RatingsStore(url)
    store.upgrade()
    with open(fresh_store.data_dir / "ratings.csv", newline="") as handle:
        rows = [(r["user_id"], r["book_id"], float(r["rating"])) for r in csv.DictReader(handle)]
    imported = store.import_ratings(rows)
    yield url, store, imported.rows
    store.close()


@pytest.fixture
def start_scheduler(fresh_store: TrainedStore, tmp_path: Path) -> Iterator[Callable[..., SchedulerProcess]]:
    """Start `bookrec scheduler` processes checking the ratings every second; kill any left at the end."""
    started: list[SchedulerProcess] = []

    def start(database: str, after_ratings: int) -> SchedulerProcess:
        log = tmp_path / f"scheduler-{len(started)}.log"
        env = fresh_store.env(
            BOOKREC_DATABASE_URL=database,
            BOOKREC_RETRAIN_AFTER_RATINGS=str(after_ratings),
            BOOKREC_RETRAIN_CHECK_S="1",
        )
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bookrec", "scheduler"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        started.append(SchedulerProcess(process, log))
        return started[-1]

    yield start
    for scheduler in started:
        if scheduler.process.poll() is None:
            scheduler.process.kill()
            scheduler.process.wait(10)


def last_check(client: redis.Redis) -> datetime | None:
    """When the running scheduler last began a ratings check, from rq.cron's registry (saved once it ended)."""
    entries = [e for s in schedulers(client, KEYS) for e in s.get_jobs() if e.name == CHECK]
    return entries[0].latest_enqueue_time if entries else None


def a_check_began_after(client: redis.Redis, moment: datetime, scheduler: SchedulerProcess) -> None:
    """Wait until a whole ratings check began after `moment` (so it saw everything written before it)."""

    def began() -> bool:
        assert scheduler.process.poll() is None, f"the scheduler exited: {scheduler.text()[-2000:]}"
        return (last_check(client) or moment) > moment

    wait_for(began, "a ratings check after the last change")


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_ratings_past_the_threshold_make_the_scheduler_enqueue_a_retrain_a_real_trainer_runs(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers, start_scheduler, database
) -> None:
    url, ratings, rows = database
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)  # trained on a file, before them
    start_workers(fresh_store.env(BOOKREC_DATABASE_URL=url), queues="retrain", processes=1)
    scheduler = start_scheduler(url, after_ratings=rows + 1)
    client = client_for(fresh_store)

    a_check_began_after(redis_client, now(), scheduler)
    status = bookrec(fresh_store, "status", "--json", BOOKREC_DATABASE_URL=url)
    assert get_cron_job_ids(CHECK, redis_client) == [] and redis_client.get(KEYS.retrain_lock) is None
    ratings.apply([RatingEvent("a-new-reader", "1", 5.0, time.time())])  # the threshold's last rating
    job_id = wait_for(lambda: get_cron_job_ids(CHECK, redis_client), "the scheduler to enqueue a retrain")[0]
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    result = client.wait([job], timeout=TIMEOUT)[0]  # run by the real trainer
    a_check_began_after(redis_client, now(), scheduler)
    code = scheduler.stop()

    shown = json.loads(status.stdout)
    assert shown["scheduler"]["after_ratings"] == rows + 1 and shown["ratings_since_production"]["count"] == rows
    assert job.func_name == jobs.RETRAIN and job.origin == "retrain"
    assert result["decision"]["reason"]
    assert get_cron_job_ids(CHECK, redis_client) == [job_id], "not again on the ratings that retrain had"
    log = scheduler.text()
    assert f"scheduled retrain ({rows + 1} ratings written after production {fresh_store.version} was made" in log
    assert f"enqueued as job {job_id} on queue retrain" in log
    assert code == 0 and "shutdown complete" in log
    assert schedulers(redis_client, KEYS) == [], "it left rq.cron's registry"


def test_a_retrain_already_running_makes_the_scheduled_one_a_no_op(
    fresh_store: TrainedStore, redis_client: redis.Redis, start_workers, start_scheduler, database
) -> None:
    url, _, _ = database
    promote(ModelStore(fresh_store.store), redis_client, KEYS, fresh_store.version)
    start_workers(fresh_store.env(BOOKREC_DATABASE_URL=url), queues="retrain", processes=1)
    client = client_for(fresh_store)
    running = client.retrain(params={"epochs": 200, "batch_size": 8}, force=True)  # far longer than the test
    wait_for(lambda: client.retrain_status(running.id)["state"] == "running", "the retrain to run")
    scheduler = start_scheduler(url, after_ratings=1)

    skipped = f"not enqueued: a retrain is already running (job {running.id})"
    wait_for(lambda: skipped in scheduler.text(), "the scheduled retrain to be skipped")
    a_check_began_after(redis_client, now(), scheduler)
    status = client.status()
    assert get_cron_job_ids(CHECK, redis_client) == []
    assert status["queues"]["retrain"]["queued"] == 0 and status["failed_jobs"] == 0
    assert status["retrain"] == {"job": running.id, "state": "running"}

    client.cancel_retrain(running.id)
    with pytest.raises(JobFailed, match="RetrainCancelled"):
        client.wait([running], timeout=TIMEOUT)
    job_id = wait_for(lambda: get_cron_job_ids(CHECK, redis_client), "the first check after it ended to enqueue")[0]
    with suppress(ValidationError):  # it may have ended already
        client.cancel_retrain(job_id)

    assert job_id != running.id
    assert scheduler.stop() == 0
