"""What the dashboard reads: Redis (through the producer's `Client`), the model store and the ratings store. The
ratings store is opened on first use and never created or migrated from here: a missing SQLite file or an
unreachable database is reported on the part of the page that needs it, and the rest of the page still shows."""

from __future__ import annotations

import threading

from bookrec.model_store.store import ModelStore
from bookrec.producer.client import Client
from bookrec.ratings.store import RatingsStore, missing_file
from bookrec.shared.errors import RatingsStoreError
from bookrec.shared.settings import Settings, redact_url


class Sources:
    """The deployment one dashboard shows: `settings`, a `client` on its Redis, its `models` store, its ratings store."""

    def __init__(self, settings: Settings, client: Client | None = None) -> None:
        self.settings = settings
        self.client = client or Client(settings=settings)
        self.models = ModelStore(settings.model_store)
        self._ratings: RatingsStore | None = None
        self._lock = threading.Lock()

    def ratings(self) -> RatingsStore:
        """The ratings store at BOOKREC_DATABASE_URL. RatingsStoreError when its SQLite file does not exist (it is not
        created), ConfigError for a URL bookrec cannot use."""
        with self._lock:
            if self._ratings is None:
                url = self.settings.database_url
                absent = missing_file(url)
                if absent is not None:
                    raise RatingsStoreError(f"no ratings store at {redact_url(url)} ({absent} does not exist)")
                self._ratings = RatingsStore(url)
            return self._ratings

    def close(self) -> None:
        """Close the ratings store's connections and the Redis client's."""
        if self._ratings is not None:
            self._ratings.close()
        self.client.redis.close()
