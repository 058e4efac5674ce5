"""The cached recommendation entry: its JSON shape, shared by the worker (writes) and the producer (reads).

    {"user_id", "model_version", "generated_at" (ISO-8601 UTC), "n", "fallback" (null or "popular"),
     "items": [{"book_id", "score", "title", "authors", "year", "image_url"}]}

Ids that are canonical integers ("42") are written as JSON numbers, any other id as a string,
so goodbooks consumers get numbers and catalogues with string ids keep them.
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


def parse_entry(raw: bytes | str) -> dict[str, Any]:
    """Decode a cached entry; ValueError if it is not an entry of this shape."""
    entry = json.loads(raw)
    if not isinstance(entry, dict) or any(field not in entry for field in ENTRY_FIELDS):
        raise ValueError("not a bookrec cache entry")
    return entry
