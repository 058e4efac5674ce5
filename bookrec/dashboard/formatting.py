"""The templates' filters: numbers, times and cover colours as the pages print them."""

from __future__ import annotations

import zlib
from datetime import datetime, timezone

from bookrec.shared.ratings import entry_time_ms

COVER_HUES = 12
"""Placeholder covers come in this many colours (CSS classes `hue-0` … `hue-11`), picked from the book id."""


def metric(value: object) -> str:
    """A metric for a table: four decimals, '–' when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.4f}"


def count(value: object) -> str:
    """A whole number with thousands separators, '–' when missing."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "–"


def epoch(value: object) -> str:
    """Epoch seconds as `YYYY-MM-DD HH:MM:SS UTC`, '–' when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def stream_time(stream_id: object) -> str:
    """When Redis added the stream entry `stream_id` (its id's milliseconds), as `epoch` prints it; '–' for none."""
    return epoch(entry_time_ms(stream_id) / 1000) if isinstance(stream_id, str) and stream_id else "–"


def duration(seconds: object) -> str:
    """A span of seconds for a person: `0.4 s`, `12 s`, `3.5 min`, `2.0 h`; '–' when missing."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def text(value: object) -> str:
    """Bytes from Redis as text (bytes that are not UTF-8, as a dead letter's may be, replaced), anything else as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def hue(book_id: object) -> int:
    """The placeholder colour of a book's cover, the same for a book on every page."""
    return zlib.crc32(str(book_id).encode()) % COVER_HUES


FILTERS = {
    "metric": metric,
    "count": count,
    "epoch": epoch,
    "stream_time": stream_time,
    "duration": duration,
    "hue": hue,
    "text": text,
}
"""Every filter, by the name the templates use."""
