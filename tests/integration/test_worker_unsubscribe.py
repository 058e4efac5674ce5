"""A worker's stop never waits on its command channel's thread (real Redis): RQ 3 with redis-py 8 could hang a
stop for up to 60 s when that thread had already seen its UNSUBSCRIBE reply (found after a Sentinel failover,
where the supervisor then killed the worker after 30 s)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from bookrec.worker.serve.rq_worker import BookrecWorker

pytestmark = pytest.mark.integration


def test_unsubscribe_returns_even_when_the_listening_thread_already_saw_its_unsubscribe(
    redis_client: redis.Redis,
) -> None:
    worker = BookrecWorker(["recommend"], connection=redis_client, name="unsubscribe-test")
    worker.subscribe()
    # The race, made certain: the channel is left first, so the listening thread loops into redis-py's wait for a
    # subscription (60 s) before the worker stops it.
    worker.pubsub.unsubscribe()
    deadline = time.monotonic() + 10
    while worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not worker.pubsub.subscribed
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(timeout=10)
    assert not stopping.is_alive(), "the worker's unsubscribe hung on its listening thread"
