"""A short version of the load run (`python -m bookrec.bench.load`, 100,000 jobs, in docs/faults.md): 2,000 single-user
recommend jobs through 2 real worker processes on a private Redis, each followed to its end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from bookrec.bench import load
from bookrec.bench.service import Pool, Service
from bookrec.model_store.store import ModelStore
from tests.conftest import TrainedStore
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

JOBS = 2000
RSS_GROWTH_LIMIT_MB = 20.0  # after warm-up; a leak of 10 KB per job would pass it


@pytest.fixture
def service(trained: TrainedStore, tmp_path: Path) -> Iterator[Service]:
    server = RedisServer(tmp_path)
    server.start()
    shutil.copytree(trained.store, tmp_path / "models")
    ModelStore(tmp_path / "models").set_production(trained.version)
    service = Service.claim(server.url(), tmp_path / "models", trained.data_dir)
    try:
        yield service
    finally:
        service.release()
        server.stop()


def test_2000_single_user_jobs_all_finish_nothing_lost_memory_flat(
    service: Service, trained: TrainedStore, tmp_path: Path
) -> None:
    pool = Pool(service, 2, tmp_path / "workers.log")
    try:
        pids = pool.wait_serving(trained.version, timeout=90)
        users = ModelStore(service.settings.model_store).metadata(trained.version)["id_maps"]["users"]
        result = load.run(service, pids, [str(u) for u in users], JOBS, processes=2, timeout=120)
    finally:
        pool.stop()

    assert (result.finished, result.failed, result.lost) == (JOBS, 0, 0), result.examples
    assert (result.queued_left, result.started_left, result.users_not_cached, result.workers_restarted) == (0, 0, 0, 0)
    assert result.users_requested == len(users) and result.ok
    assert result.rss_growth_after_warmup_mb < RSS_GROWTH_LIMIT_MB, result.rss_mb
