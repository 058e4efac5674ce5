"""A retrain job run by a real trainer process (`bookrec worker --queues retrain`) on the real Redis trains on one
snapshot of a ratings store on the real PostgreSQL (BOOKREC_TEST_POSTGRES_URL, a database of the test's own), records
it in the version's metadata without the password, and trains nothing on the unchanged store."""

from __future__ import annotations

import json

import pytest
import redis
from sqlalchemy.engine import make_url

from bookrec.model_store.promotion import promote
from bookrec.model_store.store import ModelStore
from bookrec.producer import Client
from bookrec.ratings.store import RatingsStore
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import RatingEvent
from bookrec.shared.settings import Settings, redact_url
from bookrec.worker.learn.datasets import read_ratings
from tests.conftest import TEST_REDIS_URL, TrainedStore
from tests.integration.test_ratings_postgres import admin, store  # noqa: F401  (the fixtures: a database of our own)

pytestmark = pytest.mark.integration

TIMEOUT = 180
SECRET = "not-a-real-password"
"""A password in the trainer's URL (trust auth ignores it): it must never reach a version's metadata."""


def test_a_real_trainer_trains_on_a_postgresql_store_and_records_the_snapshot(
    fresh_store: TrainedStore,
    redis_client: redis.Redis,
    start_workers,
    store: RatingsStore,  # noqa: F811
) -> None:
    store.import_ratings(read_ratings(fresh_store.data_dir / "ratings.csv").frame)
    store.apply([RatingEvent("streamed-reader", "1", 4.0, 1764590400.0, stream_id="1764590400000-0")])
    url = make_url(store.url).set(password=SECRET).render_as_string(hide_password=False)
    models = ModelStore(fresh_store.store)
    promote(models, redis_client, Keys(), fresh_store.version)  # trained on the file: the store's rows are new
    env = fresh_store.env(BOOKREC_DATABASE_URL=url)
    start_workers(env, queues="retrain", processes=1)
    client = Client(redis_url=TEST_REDIS_URL, settings=Settings.from_env(env))

    first = client.retrain(params={"steps": 60}, force=True, wait=True, timeout=TIMEOUT)

    metadata = models.metadata(first["version"])
    assert metadata["snapshot"] == {"source": "store", "url": redact_url(url), **store.snapshot().summary}
    assert metadata["snapshot"]["url"].startswith("postgresql+psycopg://postgres:***@")
    assert metadata["snapshot"]["rows"] == 6001 and metadata["snapshot"]["last_stream_id"] == "1764590400000-0"
    assert SECRET not in json.dumps(metadata)
    assert first["promoted"] is True and models.production() == first["version"]

    again = client.retrain(params={"steps": 60}, wait=True, timeout=TIMEOUT)

    assert again["version"] is None and again["decision"]["no_new_ratings"] is True, again["decision"]
    assert models.production() == first["version"]
