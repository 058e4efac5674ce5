"""Ratings to train on from the ratings store (BOOKREC_DATABASE_URL): one consistent snapshot, checked as a ratings
file is, with the summary every version trained on it records as `metadata["snapshot"]`."""

from __future__ import annotations

from bookrec.ratings.store import RatingsStore, missing_file
from bookrec.shared.errors import DataError
from bookrec.shared.settings import redact_url
from bookrec.worker.learn.datasets import RatingsData, ratings_from_frame

SOURCE = "store"
"""`metadata["snapshot"]["source"]` of a version trained on the ratings store."""


def read_store(url: str) -> RatingsData:
    """The live ratings of one snapshot of the ratings store at `url`, with their summary as `snapshot`:
    {"source": "store", "url" (redacted), "rows", "users", "items", "newest_updated_at", "last_stream_id"}.

    Raises:
        DataError: the store holds no ratings or (SQLite) its file does not exist (naming it and how to fill it),
            or a row is not a rating.
        RatingsStoreError: the store does not answer or refuses the read (e.g. never migrated).
    """
    absent = missing_file(url)
    if absent is not None:  # opening it would create an empty file
        raise DataError(
            f"the ratings store {redact_url(url)} does not exist ({absent}); create and fill it with `bookrec init`, "
            "or `bookrec db upgrade` then `bookrec data import ratings.csv` or `bookrec ingest`, "
            "or name a ratings file"
        )
    store = RatingsStore(url)
    try:
        snapshot = store.snapshot()
    finally:
        store.close()
    return ratings_from_frame(snapshot.frame(), {"source": SOURCE, "url": redact_url(url), **snapshot.summary})
