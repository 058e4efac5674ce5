"""Hot swap bookkeeping: a promotion is noticed, then taken between jobs only while a swap slot is held."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass

import pytest

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_RECOMMEND, Keys
from bookrec.worker.serve.swap import ModelHolder
from bookrec.worker.serve.swap_slots import SwapSlots

KEYS = Keys()


@dataclass
class FakeRuntime:
    """Stands in for a loaded ModelRuntime: the holder only reads its version."""

    version: str


class Loader:
    """Records every load; refuses the versions in `broken`, and those the store cannot verify."""

    def __init__(self, broken: tuple[str, ...] = ()) -> None:
        self.loaded: list[str] = []
        self.broken = broken

    def __call__(self, store: ModelStore, version: str) -> FakeRuntime:
        if version in self.broken:
            raise BookrecError(f"{version} is corrupt")
        store.verify(version)  # as ModelRuntime.load does first: VersionNotFound for a missing directory
        self.loaded.append(version)
        return FakeRuntime(version)


@pytest.fixture
def versions(trained, tmp_path) -> tuple[ModelStore, str, str]:
    """A store with two versions (copies of the session's trained one), neither in production."""
    import shutil

    root = tmp_path / "models"
    root.mkdir()
    for name in ("v20261128T000000000001Z", "v20261128T000000000002Z"):
        shutil.copytree(trained.store / trained.version, root / name)
    return ModelStore(root), "v20261128T000000000001Z", "v20261128T000000000002Z"


def serving(store: ModelStore, redis, version: str, loader: Loader, name: str = "w1", slots: int = 1) -> ModelHolder:
    holder = ModelHolder(store, redis, KEYS, name, [QUEUE_RECOMMEND], loader=loader, slots=slots)
    holder.current = FakeRuntime(version)
    return holder


def test_a_promotion_is_noticed_and_taken_between_jobs(versions, redis) -> None:
    store, old, new = versions
    promote(store, redis, KEYS, old)
    loader = Loader()
    holder = serving(store, redis, old, loader)
    assert holder.swap_if_due() is False and loader.loaded == [], "nothing was due before a promotion"

    promote(store, redis, KEYS, new)
    assert holder.swap_if_due() is False, "the worker swapped before its watcher noticed the promotion"
    holder.notice()
    assert holder.pending_version == new
    assert holder.swap_if_due() is True
    assert (holder.version, holder.pending_version, loader.loaded) == (new, None, [new])
    assert redis.get(KEYS.swap_slot(0)) is None, "the swap slot was not given back"


def test_while_every_slot_is_taken_the_worker_keeps_serving_and_retries(versions, redis) -> None:
    store, old, new = versions
    promote(store, redis, KEYS, old)
    loader = Loader()
    holder = serving(store, redis, old, loader)
    promote(store, redis, KEYS, new)
    holder.notice()
    redis.set(KEYS.swap_slot(0), "another-worker", ex=60)

    assert holder.swap_if_due() is False
    assert (holder.version, holder.pending_version, loader.loaded) == (old, new, [])
    redis.delete(KEYS.swap_slot(0))
    assert holder.swap_if_due() is True and holder.version == new


def test_two_slots_let_two_workers_load_at_once_but_not_three(redis) -> None:
    keys = [KEYS.swap_slot(i) for i in range(2)]
    first, second, third = (SwapSlots(redis, keys, name) for name in ("w1", "w2", "w3"))
    assert first.take(0.0) == keys[0]
    assert second.take(0.0) == keys[1]
    assert third.take(0.0) is None
    first.give_back(keys[0])
    assert third.take(0.0) == keys[0]


def test_a_slot_that_expired_and_changed_hands_is_not_released_by_its_old_holder(redis) -> None:
    key = KEYS.swap_slot(0)
    slow = SwapSlots(redis, [key], "slow-worker")
    assert slow.take(0.0) == key
    redis.set(key, "next-worker", ex=60)  # as if slow-worker's slot expired and next-worker took it
    slow.give_back(key)
    assert redis.get(key) == b"next-worker"


def test_a_job_that_needs_the_new_version_waits_for_a_slot_then_loads_anyway(versions, redis, monkeypatch) -> None:
    from bookrec.worker.serve import swap

    monkeypatch.setattr(swap, "SLOT_WAIT_SECONDS", 0.2)
    store, old, new = versions
    promote(store, redis, KEYS, old)
    holder = serving(store, redis, old, Loader())
    promote(store, redis, KEYS, new)
    redis.set(KEYS.swap_slot(0), "stuck-worker", ex=60)
    assert holder.check() is True and holder.version == new
    assert redis.get(KEYS.swap_slot(0)) == b"stuck-worker", "it released a slot it did not hold"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_version_that_fails_to_load_stays_pending_and_is_retried_with_backoff(versions, redis) -> None:
    store, old, new = versions
    promote(store, redis, KEYS, old)
    loader, clock = Loader(broken=(new,)), Clock()
    holder = ModelHolder(store, redis, KEYS, "w1", [QUEUE_RECOMMEND], loader=loader, clock=clock)
    holder.current = FakeRuntime(old)
    promote(store, redis, KEYS, new)
    holder.notice()
    assert holder.swap_if_due() is False and holder.version == old
    holder.notice()
    assert (holder.pending_version, holder.load_error) == (new, f"{new} is corrupt"), "status must show it pending"
    state = redis.hgetall(KEYS.worker("w1"))
    assert (state[b"version"], state[b"pending_version"], state[b"load_error"]) == (
        old.encode(),
        new.encode(),
        f"{new} is corrupt".encode(),
    )
    assert holder.swap_if_due() is False, "tried again before its backoff"
    clock.now += 1.0
    assert holder.swap_if_due() is False, "the second try (still broken) was not made"
    clock.now += 1.0
    assert holder.swap_if_due() is False, "the backoff did not double after a second failure"
    assert redis.get(KEYS.swap_slot(0)) is None

    loader.broken = ()  # the version's directory is back
    clock.now += 1.0
    assert holder.swap_if_due() is True
    assert (holder.version, holder.pending_version, holder.load_error) == (new, None, None)
    assert redis.hget(KEYS.worker("w1"), "load_error") == b""


def test_a_worker_with_no_servable_production_waits_saying_why_then_loads(versions, redis) -> None:
    store, old, _ = versions
    promote(store, redis, KEYS, old)
    hidden = store.root.parent / "hidden"
    shutil.move(store.root / old, hidden)  # production's directory moved away
    holder = ModelHolder(store, redis, KEYS, "w1", [QUEUE_RECOMMEND], loader=Loader())
    loading = threading.Thread(target=holder.load_initial)
    loading.start()
    try:
        waiting = lambda: redis.hget(KEYS.worker("w1"), "load_error") or b""  # noqa: E731
        deadline = time.monotonic() + 10
        while b"not found" not in waiting() and time.monotonic() < deadline:
            time.sleep(0.05)  # the holder publishes its state from its own thread: poll it as `bookrec status` does
        assert b"not found" in waiting() and holder.current is None
        shutil.move(hidden, store.root / old)
        loading.join(timeout=10)
        assert holder.version == old and redis.hget(KEYS.worker("w1"), "load_error") == b""
    finally:
        holder.stop()
        loading.join(timeout=10)


def test_a_job_that_needs_a_version_this_worker_cannot_load_fails_naming_why(versions, redis) -> None:
    from bookrec.shared.errors import VersionNotServed

    store, old, new = versions
    promote(store, redis, KEYS, old)
    holder = serving(store, redis, old, Loader(broken=(new,)))
    assert holder.runtime_for(old).version == old
    promote(store, redis, KEYS, new)
    with pytest.raises(VersionNotServed, match=f"serves {old}, not {new}: {new} is corrupt"):
        holder.runtime_for(new)
    with pytest.raises(VersionNotServed, match=f"not {new}"):
        holder.runtime_for()  # a refresh fans out for production's version only


def test_lost_redis_postpones_the_swap_instead_of_stopping_the_worker(versions, redis, server) -> None:
    store, old, new = versions
    promote(store, redis, KEYS, old)
    holder = serving(store, redis, old, Loader())
    promote(store, redis, KEYS, new)
    holder.notice()
    server.connected = False
    assert holder.swap_if_due() is False
    server.connected = True
    assert holder.pending_version == new and holder.swap_if_due() is True


def test_worker_state_names_the_pending_version(versions, redis) -> None:
    store, old, new = versions
    promote(store, redis, KEYS, old)
    holder = serving(store, redis, old, Loader())
    promote(store, redis, KEYS, new)
    redis.set(KEYS.swap_slot(0), "another-worker", ex=60)
    holder.notice()
    holder.swap_if_due()
    holder.publish_state()
    state = redis.hgetall(KEYS.worker("w1"))
    assert (state[b"version"], state[b"pending_version"]) == (old.encode(), new.encode())


def test_a_dead_workers_slots_are_given_back_and_no_others(redis) -> None:
    keys = [KEYS.swap_slot(i) for i in range(2)]
    assert SwapSlots(redis, keys, "dead-worker").take(0.0) == keys[0]
    assert SwapSlots(redis, keys, "live-worker").take(0.0) == keys[1]
    assert SwapSlots.of(redis, KEYS, 2, "dead-worker").release_all() == 1
    assert (redis.get(keys[0]), redis.get(keys[1])) == (None, b"live-worker")
