"""The cached recommendation entry: its JSON shape, shared by the worker (writes) and the producer (reads).

    {"user_id", "model_version", "generated_at" (ISO-8601 UTC), "n", "fallback" (null or "popular"),
     "items": [{"book_id", "score", "title", "authors", "year", "image_url"}]}

Ids that are canonical integers ("42") are written as JSON numbers, any other id as a string,
so goodbooks consumers get numbers and catalogues with string ids keep them.

`n` is the length the list was computed at (every list of a deployment is computed at its `cache:n`,
the largest n asked for), so one entry serves every request for n or fewer books: a reader takes
the first n items (`take`). `items` may be shorter than `n` for a reader who has rated nearly every book.
"""

from __future__ import annotations

import json
from typing import Any

ENTRY_FIELDS = ("user_id", "model_version", "generated_at", "n", "fallback", "items")
ITEM_FIELDS = ("book_id", "score", "title", "authors", "year", "image_url")
FALLBACK_POPULAR = "popular"


def json_id(original: str) -> int | str:
    """`original` as a JSON number when it is a canonical integer, else unchanged."""
    if original.isdigit() or (original.startswith("-") and original[1:].isdigit()):
        number = int(original)
        if str(number) == original:
            return number
    return original


def take(entry: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The entry as a reader of the top `n` sees it (its first `n` items); None if it was computed shorter than `n`."""
    if entry["n"] < n:
        return None
    return {**entry, "items": entry["items"][:n]}


def parse_entry(raw: bytes | str) -> dict[str, Any]:
    """Decode a cached entry; ValueError if it is not an entry of this shape."""
    entry = json.loads(raw)
    if not isinstance(entry, dict) or any(field not in entry for field in ENTRY_FIELDS):
        raise ValueError("not a bookrec cache entry")
    return entry
