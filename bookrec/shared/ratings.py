"""The ratings stream's contract: its fields, one parsed event, and the rules a bad event breaks.

Any service, in any language, writes `XADD bookrec:ratings * user_id 42 book_id 8 rating 4`
(README: Redis contract, Ratings stream). `parse_event` applies the rules to an entry as it comes
off the stream; the producer applies the very same function before it sends anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from bookrec.shared.errors import BadEvent, ValidationError
from bookrec.shared.payloads import shown

USER_ID = "user_id"
BOOK_ID = "book_id"
RATING = "rating"
TS = "ts"
EVENT_ID = "event_id"
OP = "op"
REASON = "reason"
"""The field a dead letter (`bookrec:ratings:dead`) adds to the refused event's original fields."""
FIELDS = (USER_ID, BOOK_ID, RATING, TS, EVENT_ID, OP)
"""Every field the stream defines; an entry's other fields are ignored."""

OP_RATE = "rate"
OP_DELETE = "delete"
OPS = (OP_RATE, OP_DELETE)
MAX_ID_BYTES = 128
GLOB_CHARACTERS = "*?[]"
_WHITESPACE_OR_GLOB = re.compile(rf"[\s{re.escape(GLOB_CHARACTERS)}]")
r"""What an id may not hold: `\s` is exactly str.isspace() (both are Py_UNICODE_ISSPACE), checked in C."""
DEFAULT_RATING_SCALE = (0.5, 5.0)
"""The lowest and highest rating by default: goodbooks' 1..5 stars and MovieLens' half stars both fit."""

Op = Literal["rate", "delete"]


@dataclass(frozen=True)
class RatingEvent:
    """One reader's rating of one book (`op` rate), or its removal (`op` delete, `rating` None)."""

    user_id: str
    book_id: str
    rating: float | None
    ts: float
    op: Op = OP_RATE
    event_id: str | None = None
    stream_id: str | None = None


@dataclass(frozen=True)
class StoredRating:
    """The ratings store's row for one (user, book): its rating (None: a tombstone, the reader removed it), the
    time of the event that won (`ts`) and when the store wrote the row (`updated_at`), epoch seconds."""

    user_id: str
    book_id: str
    rating: float | None
    ts: float
    updated_at: float


def parse_event(
    fields: Mapping[bytes | str, bytes | str],
    stream_id: str | None,
    entry_time_ms: int,
    scale: tuple[float, float] = DEFAULT_RATING_SCALE,
) -> RatingEvent:
    """The event a stream entry's `fields` describe; BadEvent with a short reason for the first broken rule.

    `entry_time_ms` (the entry's own time, the first part of its stream id) is the event's time when it
    has no `ts`. A delete needs no rating and ignores one. Ratings must be finite numbers within `scale`.
    """
    values = _named(fields)
    op = _op(values.get(OP))
    user = _identifier(values.get(USER_ID), USER_ID, required=True)
    book = _identifier(values.get(BOOK_ID), BOOK_ID, required=True)
    rating = None if op == OP_DELETE else _rating(values.get(RATING), scale)
    raw_ts = values.get(TS)
    ts = entry_time_ms / 1000 if raw_ts is None else _timestamp(raw_ts)
    event_id = _identifier(values.get(EVENT_ID), EVENT_ID, required=False)
    return RatingEvent(user, book, rating, ts, op, event_id, stream_id)


def _named(fields: Mapping[bytes | str, bytes | str]) -> dict[str, bytes | str]:
    """`fields` keyed by text; BadEvent naming a field name whose bytes are not UTF-8."""
    try:
        return {(key.decode() if key.__class__ is bytes else str(key)): value for key, value in fields.items()}
    except UnicodeDecodeError:
        return {_text(key, "field name"): value for key, value in fields.items()}


def to_fields(event: RatingEvent) -> dict[str, str]:
    """The fields to XADD for `event` (its `ts` always, `rating` and `event_id` when it has them)."""
    fields = {USER_ID: event.user_id, BOOK_ID: event.book_id}
    if event.rating is not None:
        fields[RATING] = number_text(event.rating)
    fields[TS] = number_text(event.ts)
    fields[OP] = event.op
    if event.event_id is not None:
        fields[EVENT_ID] = event.event_id
    return fields


def number_text(value: float) -> str:
    """A number as the stream carries it: `4` for a whole number, else its shortest exact decimal (`4.5`)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A Redis stream id `ms-seq` (or `ms`) as a sortable pair; ValidationError if it is not one."""
    ms, _, seq = stream_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValidationError(f"stream id {stream_id!r} is not a Redis stream id (ms-seq)") from None


def entry_time_ms(stream_id: str) -> int:
    """The milliseconds part of a stream id (`1764590000000-0`): the time Redis gave the entry."""
    return int(stream_id.partition("-")[0])


def _text(value: Any, name: str) -> str:
    """A field's value as text; BadEvent if its bytes are not UTF-8."""
    if value.__class__ is bytes:
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise BadEvent(f"{name} {shown(value)} is not UTF-8 text") from None
    return value if value.__class__ is str else str(value)


def _identifier(raw: Any, name: str, required: bool) -> str | None:
    """An id field (`raw`, None when absent): non-empty, at most MAX_ID_BYTES bytes, no whitespace or glob
    characters."""
    if raw is None:
        if required:
            raise BadEvent(f"missing {name}")
        return None
    value = _text(raw, name)
    if not value:
        raise BadEvent(f"{name} is empty")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:  # a character is 1 to 4 bytes
        raise BadEvent(f"{name} {shown(value)} is longer than {MAX_ID_BYTES} bytes")
    if _WHITESPACE_OR_GLOB.search(value):
        raise BadEvent(f"{name} {shown(value)} holds whitespace or glob characters")
    return value


def _op(raw: Any) -> Op:
    """The `op` field: `rate` when absent."""
    if raw is None:
        return OP_RATE
    value = _text(raw, OP)
    if value not in OPS:
        raise BadEvent(f"op {shown(value)} is not {' or '.join(OPS)}")
    return value  # type: ignore[return-value]


def _rating(raw: Any, scale: tuple[float, float]) -> float:
    """The `rating` field: a finite number within `scale`."""
    if raw is None:
        raise BadEvent(f"missing {RATING}")
    value = _text(raw, RATING)
    try:
        rating = float(value)
    except ValueError:
        raise BadEvent(f"rating {shown(value)} is not a number") from None
    if not math.isfinite(rating):
        raise BadEvent(f"rating {shown(value)} is not a finite number")
    low, high = scale
    if not low <= rating <= high:
        raise BadEvent(f"rating {shown(value)} is outside the scale {low:g} to {high:g}")
    return rating


def _timestamp(raw: Any) -> float:
    """The `ts` field: epoch seconds (a finite number, not negative) or ISO-8601 in UTC, as epoch seconds."""
    value = _text(raw, TS)
    try:
        seconds = float(value)
    except ValueError:
        return _iso_seconds(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise BadEvent(f"ts {shown(value)} is not epoch seconds or ISO-8601 UTC")
    return seconds


def _iso_seconds(value: str) -> float:
    """Epoch seconds of an ISO-8601 time in UTC (`Z`, `+00:00`, or no offset, taken as UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadEvent(f"ts {shown(value)} is not epoch seconds or ISO-8601 UTC") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    elif moment.utcoffset():
        raise BadEvent(f"ts {shown(value)} is not in UTC; give it with Z or +00:00")
    return moment.timestamp()
