"""The environment the supervisor gives its worker processes."""

from __future__ import annotations

import pytest

from bookrec.worker.serve.supervisor import Supervisor


def test_serving_workers_map_large_buffers_on_their_own_unless_the_operator_said_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    serving = Supervisor(queues=["recommend", "fresh", "refresh"], processes=1)._worker_env()
    assert (serving["MALLOC_MMAP_THRESHOLD_"], serving["MALLOC_ARENA_MAX"]) == ("131072", "4")
    assert "MALLOC_MMAP_THRESHOLD_" not in Supervisor(queues=["retrain"], processes=1)._worker_env(), "a trainer"
