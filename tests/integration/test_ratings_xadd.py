"""The ratings stream on the real Redis: the Client's XADDs read back with XRANGE, and an entry written
by "another language" (a raw `XADD`, as redis-cli sends it) parsed by the same `parse_event`."""

from __future__ import annotations

import pytest
import redis

from bookrec.producer import Client
from bookrec.shared.errors import BadEvent
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import RatingEvent, entry_time_ms, parse_event
from bookrec.shared.settings import Settings
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration
STREAM = Keys().ratings_stream


def parsed(entry: tuple[bytes, dict[bytes, bytes]]) -> RatingEvent:
    """One XRANGE entry parsed as the ingest will."""
    stream_id, fields = entry[0].decode(), entry[1]
    return parse_event(fields, stream_id, entry_time_ms(stream_id))


def read_back(client: redis.Redis) -> list[RatingEvent]:
    """Every entry of the stream (XRANGE - +), parsed."""
    return [parsed(entry) for entry in client.xrange(STREAM, "-", "+")]


def test_client_events_land_on_the_stream_in_order(redis_client: redis.Redis) -> None:
    client = Client(settings=Settings(redis_url=TEST_REDIS_URL))
    first = client.rate(42, 8, 4)
    many = client.rate_many(
        [{"user_id": 42, "book_id": b, "rating": 3.5, "ts": 1764592400 + b, "event_id": f"e{b}"} for b in range(100)]
    )
    last = client.unrate(42, 8, event_id="undo")
    events = read_back(redis_client)
    assert [e.stream_id for e in events] == [first, *many, last]
    assert events[0] == RatingEvent("42", "8", 4.0, entry_time_ms(first) / 1000, "rate", None, first)
    assert [(e.book_id, e.ts, e.event_id) for e in events[1:4]] == [
        ("0", 1764592400.0, "e0"),
        ("1", 1764592401.0, "e1"),
        ("2", 1764592402.0, "e2"),
    ]
    assert (events[-1].op, events[-1].rating, events[-1].event_id) == ("delete", None, "undo")
    with pytest.raises(BadEvent):
        client.rate_many([{"user_id": 1, "book_id": 2, "rating": 4}, {"user_id": 1, "book_id": 2, "rating": 50}])
    assert redis_client.xlen(STREAM) == 102


def test_an_entry_written_by_another_language_parses(redis_client: redis.Redis) -> None:
    plain = redis_client.execute_command("XADD", STREAM, "*", "user_id", "42", "book_id", "8", "rating", "4")
    full = redis_client.execute_command(
        "XADD", STREAM, "*", "user_id", "u-7", "book_id", "b-9", "rating", "2.5",
        "ts", "2025-12-01T12:33:20Z", "event_id", "kafka-0-17", "op", "rate", "source", "kiosk",
    )  # fmt: skip
    gone = redis_client.execute_command("XADD", STREAM, "*", "user_id", "42", "book_id", "8", "op", "delete")
    bad = redis_client.execute_command("XADD", STREAM, "*", "user_id", "42", "book_id", "8", "rating", "ten")
    *good, last = redis_client.xrange(STREAM)
    assert [parsed(entry) for entry in good] == [
        RatingEvent("42", "8", 4.0, entry_time_ms(plain.decode()) / 1000, "rate", None, plain.decode()),
        RatingEvent("u-7", "b-9", 2.5, 1764592400.0, "rate", "kafka-0-17", full.decode()),
        RatingEvent("42", "8", None, entry_time_ms(gone.decode()) / 1000, "delete", None, gone.decode()),
    ]
    with pytest.raises(BadEvent, match="rating 'ten' is not a number"):
        parsed(last)
    assert last[0] == bad
