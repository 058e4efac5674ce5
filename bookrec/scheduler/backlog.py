"""The ratings production has not trained on: the rows the ratings store wrote after production's snapshot.

A version trained on the store records `metadata["snapshot"]` ({"source": "store", "url", "rows", "users", "items",
"newest_updated_at", "last_stream_id"}): a row written after its `newest_updated_at` is new to it. A version trained
on a file (`snapshot` null or absent) knew nothing of the store, so every row written after its `created_at` is new;
with no production every row is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bookrec.model_store.store import ModelStore
from bookrec.model_store.store import iso as store_iso
from bookrec.shared.errors import CorruptVersion

SNAPSHOT, CREATED_AT, NO_PRODUCTION = "snapshot", "created_at", "no production"
"""What a horizon is taken from: production's store snapshot, production's creation time, or nothing."""


@dataclass(frozen=True)
class Horizon:
    """The moment after which a rating is new to production `version`: epoch seconds (None: every rating is)."""

    version: str | None
    since: float | None
    basis: str

    def describe(self) -> str:
        """Which ratings count, in words, for logs: "written after production v…'s snapshot of T" and the like."""
        if self.basis == NO_PRODUCTION:
            return "in the store (no production model)"
        if self.since is None:
            return f"in the store (production {self.version} trained on an empty store)"
        if self.basis == SNAPSHOT:
            return f"written after production {self.version}'s snapshot of {iso(self.since)}"
        return f"written after production {self.version} was made, {iso(self.since)} (it trained on a file)"


def horizon(models: ModelStore, version: str | None) -> Horizon:
    """The horizon of production `version` (None: no production) from its metadata.json; CorruptVersion when the
    snapshot's `newest_updated_at` or `created_at` is not a time, VersionNotFound when the version is not in `models`."""
    if version is None:
        return Horizon(None, None, NO_PRODUCTION)
    metadata = models.metadata(version)
    snapshot = metadata.get("snapshot")
    if isinstance(snapshot, dict):
        newest = snapshot.get("newest_updated_at")  # None: it trained on an empty store, so every row is new
        since = None if newest is None else _seconds(version, "snapshot.newest_updated_at", newest)
        return Horizon(version, since, SNAPSHOT)
    return Horizon(version, _seconds(version, "created_at", metadata.get("created_at")), CREATED_AT)


def iso(moment: float | None) -> str | None:
    """Epoch seconds as the model store writes times, ISO-8601 UTC (None stays None)."""
    return None if moment is None else store_iso(datetime.fromtimestamp(moment, timezone.utc))


def _seconds(version: str, field: str, value: Any) -> float:
    """`value` (epoch seconds, or an ISO-8601 time) as epoch seconds; CorruptVersion naming `field` otherwise."""
    try:
        seconds = datetime.fromisoformat(value).timestamp() if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds):
        raise CorruptVersion(f"model version {version}: metadata.json's {field} {value!r} is not a time")
    return seconds
