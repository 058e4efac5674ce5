"""TensorFlow threads per worker process: all cores for a trainer, one for a serving worker, unless configured."""

from __future__ import annotations

import pytest

from bookrec.shared.settings import Settings
from bookrec.worker.serve.tf_setup import threads_for


@pytest.mark.parametrize(
    ("queues", "threads"),
    [(["retrain"], 0), (["recommend", "refresh"], 1), (["recommend", "refresh", "retrain"], 1)],
    ids=["trainer", "serving", "serving and training"],
)
def test_by_default_a_trainer_uses_every_core_and_a_serving_worker_one_thread(queues: list[str], threads: int) -> None:
    assert Settings.from_env({}).tf_threads is None
    assert threads_for(queues, Settings.from_env({}).tf_threads) == threads


@pytest.mark.parametrize("queues", [["retrain"], ["recommend", "refresh"]])
def test_bookrec_tf_threads_applies_to_every_worker(queues: list[str]) -> None:
    assert threads_for(queues, Settings.from_env({"BOOKREC_TF_THREADS": "3"}).tf_threads) == 3
    assert threads_for(queues, Settings.from_env({"BOOKREC_TF_THREADS": "0"}).tf_threads) == 0
