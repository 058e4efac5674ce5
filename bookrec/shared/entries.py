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
from numbers import Real
from typing import Any

from bookrec.shared.errors import MalformedEntry
from bookrec.shared.payloads import shown

MAX_ENTRY_BYTES = 1_000_000
"""The largest entry a reader reads: a list of 100 books takes about 21 KB, so anything longer is not an entry."""
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


def parse_entry(raw: bytes | str, where: str = "the cache entry") -> dict[str, Any]:
    """Decode a cached entry and check its shape (the fields above, each of its type); MalformedEntry naming
    `where` (its key) and the first problem otherwise; longer than MAX_ENTRY_BYTES is a problem too."""
    entry = None
    if len(raw) > MAX_ENTRY_BYTES:
        problem = f"longer than {MAX_ENTRY_BYTES:,} bytes"
    else:
        try:
            entry = json.loads(raw)
            problem = entry_problem(entry)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            problem = f"not JSON text ({type(exc).__name__})"
    if problem is not None:
        raise MalformedEntry(f"{where} is not a bookrec entry: {problem}; a new request for the reader replaces it")
    return entry


def entry_problem(entry: Any) -> str | None:
    """What makes `entry` (decoded JSON) not an entry of the shape above, or None if it is one."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    missing = [field for field in ENTRY_FIELDS if field not in entry]
    if missing:
        return f"no {', '.join(missing)}"
    checks = {
        "user_id": _is_id(entry["user_id"]),
        "model_version": isinstance(entry["model_version"], str),
        "generated_at": isinstance(entry["generated_at"], str),
        "n": _is_int(entry["n"]) and entry["n"] >= 1,
        "fallback": entry["fallback"] is None or isinstance(entry["fallback"], str),
        "items": isinstance(entry["items"], list),
    }
    wrong = [field for field, ok in checks.items() if not ok]
    if wrong:
        return f"{wrong[0]} is {shown(entry[wrong[0]])}"
    for position, item in enumerate(entry["items"]):
        problem = _item_problem(item)
        if problem is not None:
            return f"item {position} {problem}"
    return None


def _item_problem(item: Any) -> str | None:
    """What makes one of an entry's items not a book of the shape above, or None."""
    if not isinstance(item, dict):
        return f"is {shown(item)}, not an object"
    missing = [field for field in ITEM_FIELDS if field not in item]
    if missing:
        return f"has no {', '.join(missing)}"
    checks = {
        "book_id": _is_id(item["book_id"]),
        "score": isinstance(item["score"], Real) and not isinstance(item["score"], bool),
        "year": item["year"] is None or _is_int(item["year"]),
        **{field: item[field] is None or isinstance(item[field], str) for field in ("title", "authors", "image_url")},
    }
    wrong = [field for field, ok in checks.items() if not ok]
    return f"has {wrong[0]} {shown(item[wrong[0]])}" if wrong else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)
