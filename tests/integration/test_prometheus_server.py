"""The metrics as a real Prometheus scrapes them: Debian's `prometheus` started on a free port, scraping every second
a real `bookrec worker` supervisor (two worker processes on recommend,fresh,refresh, one metrics port), a real
`bookrec ingest` and a real `bookrec scheduler` on the real Redis and a SQLite ratings store. The series arrive, the
counters move as jobs run and events are ingested, a killed worker's gauges go while its counts stay, and the version
label changes after a hot swap. Every wait polls Prometheus's query API with a deadline."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
import yaml

from bookrec.ingest.consumer import group_info
from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import ChildProcess, IngestProcess
from tests.conftest import REPO, TrainedStore, train_tiny
from tests.integration.test_faults import wait_for

pytestmark = pytest.mark.integration
KEYS = Keys()
QUEUES = "recommend,fresh,refresh"
PROMETHEUS = shutil.which("prometheus")
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
TIMEOUT = 90.0

Vector = list[dict]
"""A query's result: [{"metric": {label: value}, "value": [time, "number"]}]."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Prometheus:
    """A real Prometheus server scraping `targets` ({job: "host:port"}) every second, its data in `root`."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        root.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait(lambda: self._ready(), "Prometheus to be ready", timeout=60)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, promql: str) -> Vector:
        """The instant vector `promql` evaluates to now."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The one number `promql` evaluates to (None while it has no series)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait(self, condition: Callable[[], object], what: str, timeout: float = TIMEOUT) -> object:
        """Poll `condition` until it is truthy; fail naming `what` (and what Prometheus scrapes) after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; targets: {self.targets()}")

    def wait_value(self, promql: str, at_least: float, timeout: float = TIMEOUT) -> float:
        """Wait until `promql` is at least `at_least`; its value."""
        return self.wait(
            lambda: (v := self.value(promql)) is not None and v >= at_least and v, f"{promql} >= {at_least}", timeout
        )

    def targets(self) -> list[tuple[str, str, str]]:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
                active = json.load(response)["data"]["activeTargets"]
        except OSError as exc:
            return [("?", "?", str(exc))]
        return [(t["labels"]["job"], t["health"], t.get("lastError", "")) for t in active]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    """Factory starting a Prometheus over some targets; stopped at the end of the test."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        started.append(Prometheus(tmp_path / "prometheus", targets))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ChildProcess]]:
    """bookrec processes a test starts; stopped at its end."""
    started: list[ChildProcess] = []
    yield started
    for process in reversed(started):
        process.stop(timeout=30)


def served_pids(prom: Prometheus) -> list[str]:
    """The pids of the worker processes Prometheus last scraped serving a version."""
    return sorted(series["metric"]["pid"] for series in prom.query('bookrec_model_served{job="worker"} == 1'))


def served_versions(prom: Prometheus) -> list[str]:
    """The version each live worker process serves, as Prometheus last scraped them."""
    return sorted(series["metric"]["version"] for series in prom.query('bookrec_model_served{job="worker"} == 1'))


def test_prometheus_scrapes_the_workers_the_ingest_and_the_scheduler_and_sees_a_hot_swap(
    fresh_store: TrainedStore,
    redis_client: redis.Redis,
    start_workers,
    processes: list[ChildProcess],
    prometheus,
    tmp_path: Path,
) -> None:
    ports = {"worker": free_port(), "ingest": free_port(), "scheduler": free_port()}
    env = fresh_store.env(
        BOOKREC_DATABASE_URL=f"sqlite:///{tmp_path / 'ratings.db'}",
        BOOKREC_INGEST_BLOCK_MS="100",
        BOOKREC_METRICS_PORT=str(ports["worker"]),
        BOOKREC_INGEST_METRICS_PORT=str(ports["ingest"]),
        BOOKREC_SCHEDULER_METRICS_PORT=str(ports["scheduler"]),
        BOOKREC_RETRAIN_AFTER_RATINGS="1000000",  # counts every second, never retrains here
        BOOKREC_RETRAIN_CHECK_S="1",
    )
    old = fresh_store.version
    promote(ModelStore(fresh_store.store), redis_client, KEYS, old)
    pool = start_workers(env, QUEUES, 2)
    processes.append(IngestProcess(env, tmp_path / "ingest.log"))
    # The scheduler after the ingest has migrated the SQLite store (its group exists once it has), not beside it.
    wait_for(lambda: group_info(redis_client, KEYS.ratings_stream), "the ingest to start", timeout=TIMEOUT)
    processes.append(ChildProcess([sys.executable, "-m", "bookrec", "scheduler"], env, tmp_path / "scheduler.log"))
    prom = prometheus({job: f"127.0.0.1:{port}" for job, port in ports.items()})
    pool.wait_ready(redis_client, 2, old, timeout=TIMEOUT)

    # The series arrive: every target is up, both worker processes serve the old version behind one port.
    prom.wait(lambda: sorted(s["metric"]["job"] for s in prom.query("up == 1")) == sorted(ports), "every target up")
    prom.wait(lambda: served_versions(prom) == [old, old], f"two worker processes serving {old}")
    assert prom.value('bookrec_worker_processes{job="worker"}') == 2

    # Counters move as jobs run.
    client = Client(settings=Settings.from_env(env))
    users = ModelStore(fresh_store.store).metadata(old)["id_maps"]["users"][:12]
    for start in range(0, 12, 4):
        client.recommend(users[start : start + 4], n=5, wait=True, timeout=60)
    prom.wait_value('sum(bookrec_jobs_total{queue="recommend", outcome="succeeded"})', 3)
    prom.wait_value('sum(bookrec_readers_scored_total{queue="recommend"})', 12)
    prom.wait_value('sum(bookrec_cache_writes_total{queue="recommend"})', 12)
    prom.wait_value('sum(bookrec_job_duration_seconds_count{queue="recommend"})', 3)
    assert prom.query('bookrec_queue_jobs{queue="recommend"}'), "the supervisor reports its queues' backlog"

    # Ratings: applied and dead events counted by the ingest, the fresh lists' latency by the workers.
    reader = users[0]
    ids = [client.rate(reader, book, 4) for book in ("1", "2", "3")]
    redis_client.xadd(KEYS.ratings_stream, {"user_id": reader, "book_id": "4", "rating": "99"})  # off the scale
    client.wait_rated(reader, ids[-1], timeout=60)
    prom.wait_value('sum(bookrec_ingest_events_total{outcome="applied"})', 3)
    prom.wait_value('sum(bookrec_ingest_events_total{outcome="dead"})', 1)
    prom.wait_value("bookrec_ingest_dead_entries", 1)
    prom.wait_value("sum(bookrec_fresh_list_latency_seconds_count)", 1)
    prom.wait(lambda: prom.value("bookrec_ingest_unacknowledged_entries") == 0, "the ingest to have caught up")
    prom.wait_value("bookrec_scheduler_new_ratings", 3)

    # A worker killed: restarted, its per-process gauges gone with it, its counts kept in the totals.
    jobs_before = prom.value('sum(bookrec_jobs_total{queue="recommend"})')
    killed = str(served_pids(prom)[0])
    os.kill(int(killed), signal.SIGKILL)
    prom.wait_value('bookrec_worker_restarts_total{job="worker"}', 1)
    prom.wait(lambda: len(served_pids(prom)) == 2 and killed not in served_pids(prom), "the restarted worker serving")
    assert prom.value('sum(bookrec_jobs_total{queue="recommend"})') >= jobs_before, "a counter went back"

    # A hot swap: the version label moves to the new version in both processes.
    new = train_tiny(fresh_store.store, fresh_store.data_dir, seed=1)
    client.promote(new)
    prom.wait(lambda: served_versions(prom) == [new, new], f"both worker processes serving {new}")
    prom.wait_value('sum(bookrec_model_swaps_total{outcome="swapped"})', 2)
    prom.wait_value("sum(bookrec_model_swap_seconds_count)", 2)
    prom.wait(lambda: prom.value("max(bookrec_model_swap_pending)") == 0, "no swap pending any more")

    # The committed alert rules speak of series these processes export, and Prometheus evaluates each of them.
    for rule in alert_rules():
        for name in set(re.findall(r"\bbookrec_\w+", rule["expr"])):
            assert prom.query(f'count({{__name__="{name}"}})'), f"{rule['alert']}: no series {name}"
        prom.query(rule["expr"])


def alert_rules() -> list[dict]:
    """The rules of the committed alerts file (deploy/prometheus/alerts.yml)."""
    groups = yaml.safe_load((PROMETHEUS_CONFIG.parent / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_committed_scrape_config_and_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it; .ci/run installs it)")
    checked = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr and "alerts.yml" in checked.stdout + checked.stderr
