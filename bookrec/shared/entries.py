"""The cached recommendation entry: its JSON shape, shared by the worker (writes) and the producer (reads).

    {"user_id", "model_version", "generated_at" (ISO-8601 UTC), "n", "fallback" (null or "popular"),
     "ratings_through" (null or a stream id), "items": [{"book_id", "score", "title", "authors", "year", "image_url"}]}

`ratings_through` is the stream id (`ms-seq`) of the newest rating event of the reader the list includes beyond
the version's training data (their delta, see shared/delta.py), null if none came since the version's snapshot;
entries written before it existed have no such field, which reads as null.

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
from bookrec.shared.ratings import stream_id_key

MAX_ENTRY_BYTES = 1_000_000
"""The largest entry a reader reads: a list of 100 books takes about 21 KB, so anything longer is not an entry."""
RATINGS_THROUGH = "ratings_through"
ENTRY_FIELDS = ("user_id", "model_version", "generated_at", "n", "fallback", RATINGS_THROUGH, "items")
"""The fields of an entry, in the order workers write them; every one but `ratings_through` is required."""
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
    missing = [field for field in ENTRY_FIELDS if field not in entry and field != RATINGS_THROUGH]
    if missing:
        return f"no {', '.join(missing)}"
    checks = {
        "user_id": _is_id(entry["user_id"]),
        "model_version": isinstance(entry["model_version"], str),
        "generated_at": isinstance(entry["generated_at"], str),
        "n": _is_int(entry["n"]) and entry["n"] >= 1,
        "fallback": entry["fallback"] is None or isinstance(entry["fallback"], str),
        "items": isinstance(entry["items"], list),
        RATINGS_THROUGH: _is_stream_id(entry.get(RATINGS_THROUGH)),
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


def ratings_through(entry: dict[str, Any]) -> tuple[int, int] | None:
    """An entry's `ratings_through` as a sortable (ms, seq) pair, None when it has none."""
    value = entry.get(RATINGS_THROUGH)
    return None if value is None else stream_id_key(value)


def _is_stream_id(value: Any) -> bool:
    """Whether `value` is null or a stream id `ms-seq`."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    ms, _, seq = value.partition("-")
    return ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)
