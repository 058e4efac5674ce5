"""The ratings stream's contract (`shared/ratings.py`), the producer's `rate | unrate | rate_many`, and the CLI.

Every rule a bad event breaks is refused with a short reason naming the field, by `parse_event`
(what the ingest will apply to entries off the stream) and by the Client before it sends anything.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import fakeredis
import pytest

import bookrec.producer.client
from bookrec.producer import Client
from bookrec.producer.client import MAX_EVENTS_PER_CALL
from bookrec.shared.errors import BadEvent, ConfigError, ValidationError
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import RatingEvent, entry_time_ms, parse_event, to_fields
from bookrec.shared.settings import Settings
from tests.unit.conftest import run_cli

KEYS = Keys()
STREAM = KEYS.ratings_stream
ENTRY_MS = 1_764_590_000_123
GOOD = {"user_id": "42", "book_id": "8", "rating": "4"}


def parse(**fields: str | bytes | None) -> RatingEvent:
    """parse_event of GOOD with `fields` changed (None removes one), as the ingest would see the entry."""
    entry = {k: v for k, v in {**GOOD, **fields}.items() if v is not None}
    return parse_event(
        {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entry.items()}, "1-0", ENTRY_MS
    )


# ---------------------------------------------------------------- parse_event


def test_a_plain_event_takes_the_entry_s_time_and_the_defaults() -> None:
    assert parse() == RatingEvent("42", "8", 4.0, ENTRY_MS / 1000, "rate", None, "1-0")


def test_str_keys_and_values_parse_like_bytes() -> None:
    assert parse_event(GOOD, None, ENTRY_MS) == RatingEvent("42", "8", 4.0, ENTRY_MS / 1000, "rate", None, None)


@pytest.mark.parametrize(
    "ts, seconds",
    [
        ("1764590000", 1764590000.0),
        ("1764590000.25", 1764590000.25),
        ("2025-12-01T12:33:20Z", 1764592400.0),
        ("2025-12-01T12:33:20+00:00", 1764592400.0),
        ("2025-12-01T12:33:20.5", 1764592400.5),
    ],
)
def test_ts_in_epoch_seconds_or_iso_8601_utc(ts: str, seconds: float) -> None:
    assert parse(ts=ts).ts == seconds


def test_a_delete_needs_no_rating_and_carries_none() -> None:
    event = parse(op="delete", rating=None, event_id="evt-1")
    assert (event.op, event.rating, event.event_id) == ("delete", None, "evt-1")


def test_half_stars_and_the_scale_s_ends_are_ratings() -> None:
    assert [parse(rating=r).rating for r in ("0.5", "3.5", "5", "5.0")] == [0.5, 3.5, 5.0, 5.0]


def test_a_book_missing_from_any_catalogue_is_not_bad_and_other_fields_are_ignored() -> None:
    event = parse(book_id="not-in-the-catalogue", source="kiosk")
    assert event.book_id == "not-in-the-catalogue"


BAD_EVENTS = {
    "missing user_id": ({"user_id": None}, "missing user_id"),
    "missing book_id": ({"book_id": None}, "missing book_id"),
    "missing rating": ({"rating": None}, "missing rating"),
    "rating not a number": ({"rating": "four"}, "rating 'four' is not a number"),
    "rating empty": ({"rating": ""}, "rating '' is not a number"),
    "rating NaN": ({"rating": "nan"}, "rating 'nan' is not a finite number"),
    "rating inf": ({"rating": "inf"}, "rating 'inf' is not a finite number"),
    "rating above the scale": ({"rating": "6"}, "rating '6' is outside the scale 0.5 to 5"),
    "rating below the scale": ({"rating": "0"}, "rating '0' is outside the scale 0.5 to 5"),
    "user_id empty": ({"user_id": ""}, "user_id is empty"),
    "book_id empty": ({"book_id": ""}, "book_id is empty"),
    "user_id too long": ({"user_id": "u" * 129}, "user_id 'uuuuu"),
    "book_id too long in bytes": ({"book_id": "é" * 65}, "is longer than 128 bytes"),
    "user_id with a space": ({"user_id": "4 2"}, "user_id '4 2' holds whitespace or glob characters"),
    "user_id with a tab": ({"user_id": "42\t"}, "user_id '42\\t' holds whitespace or glob characters"),
    "book_id with a star": ({"book_id": "8*"}, "book_id '8*' holds whitespace or glob characters"),
    "book_id with brackets": ({"book_id": "[8]"}, "book_id '[8]' holds whitespace or glob characters"),
    "user_id with a question mark": ({"user_id": "4?"}, "user_id '4?' holds whitespace or glob characters"),
    "user_id not UTF-8": ({"user_id": b"\xff42"}, "user_id b'\\xff42' is not UTF-8 text"),
    "event_id with a newline": ({"event_id": "a\nb"}, "event_id 'a\\nb' holds whitespace or glob characters"),
    "event_id empty": ({"event_id": ""}, "event_id is empty"),
    "ts words": ({"ts": "yesterday"}, "ts 'yesterday' is not epoch seconds or ISO-8601 UTC"),
    "ts negative": ({"ts": "-5"}, "ts '-5' is not epoch seconds or ISO-8601 UTC"),
    "ts NaN": ({"ts": "nan"}, "ts 'nan' is not epoch seconds or ISO-8601 UTC"),
    "ts another offset": ({"ts": "2025-12-01T12:33:20+02:00"}, "is not in UTC; give it with Z or +00:00"),
    "op unknown": ({"op": "remove"}, "op 'remove' is not rate or delete"),
    "op empty": ({"op": ""}, "op '' is not rate or delete"),
}


@pytest.mark.parametrize("case", BAD_EVENTS)
def test_every_bad_event_is_refused_with_a_short_reason_naming_the_field(case: str) -> None:
    changes, reason = BAD_EVENTS[case]
    with pytest.raises(BadEvent) as caught:
        parse(**changes)
    assert reason in caught.value.reason
    assert caught.value.reason == str(caught.value) and "\n" not in caught.value.reason
    assert len(caught.value.reason) < 120


def test_a_long_bad_value_is_quoted_cut_short() -> None:
    with pytest.raises(BadEvent) as caught:
        parse(user_id="x" * 10_000)
    assert "(10,002 characters)" in caught.value.reason and len(caught.value.reason) < 120


def test_the_scale_is_configurable() -> None:
    settings = Settings.from_env({"BOOKREC_RATING_MIN": "1", "BOOKREC_RATING_MAX": "10"})
    assert settings.rating_scale == (1.0, 10.0)
    assert parse_event({**GOOD, "rating": "9.5"}, None, ENTRY_MS, settings.rating_scale).rating == 9.5
    with pytest.raises(BadEvent, match="outside the scale 1 to 10"):
        parse_event({**GOOD, "rating": "0.5"}, None, ENTRY_MS, settings.rating_scale)
    assert Settings.from_env({}).rating_scale == (0.5, 5.0)


@pytest.mark.parametrize(
    "env", [{"BOOKREC_RATING_MIN": "5"}, {"BOOKREC_RATING_MAX": "x"}, {"BOOKREC_RATING_MIN": "nan"}]
)
def test_a_bad_scale_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="BOOKREC_RATING_M"):
        Settings.from_env(env)


def test_to_fields_round_trips_through_parse_event() -> None:
    for event in (
        RatingEvent("42", "8", 4.5, 1764590000.25, "rate", "evt-1"),
        RatingEvent("u", "b", None, 1764590000.0, "delete"),
    ):
        fields = to_fields(event)
        assert all(isinstance(v, str) for v in fields.values())
        assert parse_event(fields, "9-0", 0) == RatingEvent(**{**event.__dict__, "stream_id": "9-0"})


def test_entry_time_ms_is_the_stream_id_s_first_part() -> None:
    assert entry_time_ms("1764590000123-7") == 1764590000123


# ---------------------------------------------------------------- the Client


@pytest.fixture
def client(redis: fakeredis.FakeRedis) -> Client:
    return Client(settings=Settings(), connection=redis)


def entries(redis: fakeredis.FakeRedis) -> list[RatingEvent]:
    """Every event on the stream, parsed as the ingest will."""
    return [parse_event(f, i.decode(), entry_time_ms(i.decode())) for i, f in redis.xrange(STREAM)]


def test_rate_and_unrate_write_the_stream_and_return_its_ids(client: Client, redis: fakeredis.FakeRedis) -> None:
    ids = [
        client.rate(42, 8, 4),
        client.rate("u-1", "b-2", 3.5, ts="2025-12-01T12:33:20Z", event_id="evt-1"),
        client.rate("u-1", "b-3", 5, ts=datetime(2025, 12, 1, 12, 33, 20, tzinfo=timezone.utc)),
        client.unrate(42, 8, ts=1764592400),
    ]
    assert [i.decode() for i, _ in redis.xrange(STREAM)] == ids
    first, second, third, fourth = entries(redis)
    assert redis.xrange(STREAM)[0][1] == {b"user_id": b"42", b"book_id": b"8", b"rating": b"4"}
    assert first.ts == entry_time_ms(ids[0]) / 1000  # no ts given: the entry's own time
    assert (second.user_id, second.rating, second.ts, second.event_id) == ("u-1", 3.5, 1764592400.0, "evt-1")
    assert third.ts == 1764592400.0
    assert (fourth.op, fourth.rating, fourth.user_id, fourth.book_id) == ("delete", None, "42", "8")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"rating": 7}, "rating '7' is outside the scale"),
        ({"rating": math.nan}, "rating 'nan' is not a finite number"),
        ({"rating": True}, "rating True is a bool"),
        ({"rating": "4"}, None),  # a number given as text is what other languages send: accepted
        ({"user_id": "a b"}, "user_id 'a b' holds whitespace"),
        ({"user_id": None}, "missing user_id"),
        ({"book_id": ["8"]}, "book_id ['8'] is a list"),
        ({"ts": "soon"}, "ts 'soon' is not epoch seconds"),
        ({"event_id": "x" * 200}, "event_id 'xxx"),
    ],
)
def test_rate_refuses_a_bad_event_naming_the_field_and_sends_nothing(
    client: Client, redis: fakeredis.FakeRedis, kwargs: dict, reason: str | None
) -> None:
    args = {"user_id": 42, "book_id": 8, "rating": 4, **kwargs}
    if reason is None:
        client.rate(**args)
        assert redis.xlen(STREAM) == 1
        return
    with pytest.raises(ValidationError, match="rating event 0: ") as caught:
        client.rate(**args)
    assert isinstance(caught.value, BadEvent) and reason in str(caught.value)
    assert redis.xlen(STREAM) == 0


def test_rate_many_sends_one_pipeline_and_returns_the_ids_in_order(
    client: Client, redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    executed = []
    real_pipeline = redis.pipeline

    def counting_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute
        pipe.execute = lambda *a, **k: executed.append(len(pipe.command_stack)) or real_execute(*a, **k)
        return pipe

    monkeypatch.setattr(redis, "pipeline", counting_pipeline)
    events = [{"user_id": u, "book_id": b, "rating": 1 + (u + b) % 4} for u in range(50) for b in range(20)]
    events.append({"user_id": 3, "book_id": 4, "op": "delete", "event_id": "undo-1"})
    ids = client.rate_many(iter(events))
    assert executed == [len(events)]  # every XADD in one round trip
    assert [i.decode() for i, _ in redis.xrange(STREAM)] == ids
    parsed = entries(redis)
    assert [(e.user_id, e.book_id, e.rating) for e in parsed[:3]] == [("0", "0", 1.0), ("0", "1", 2.0), ("0", "2", 3.0)]
    assert (parsed[-1].op, parsed[-1].event_id) == ("delete", "undo-1")


def test_rate_many_takes_10_000_events_and_refuses_one_more_sending_nothing(
    client: Client, redis: fakeredis.FakeRedis
) -> None:
    events = [{"user_id": i, "book_id": 1, "rating": 4} for i in range(MAX_EVENTS_PER_CALL + 1)]
    with pytest.raises(ValidationError, match="10,001 rating events in one call; at most 10,000 are allowed"):
        client.rate_many(events)
    assert redis.xlen(STREAM) == 0
    assert len(client.rate_many(events[:MAX_EVENTS_PER_CALL])) == MAX_EVENTS_PER_CALL
    assert redis.xlen(STREAM) == MAX_EVENTS_PER_CALL


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"user_id": 1, "book_id": 2, "rating": 99}, "rating event 2: rating '99' is outside the scale"),
        ({"user_id": 1, "book_id": 2, "rating": 4, "stars": 4}, "rating event 2: unknown field(s) 'stars'"),
        ({"user_id": 1, "book_id": 2, "op": "undo"}, "rating event 2: op 'undo' is not rate or delete"),
        ("user_id=1", "rating event 2: a rating event must be a mapping of fields, got str"),
    ],
)
def test_rate_many_sends_nothing_when_any_event_is_bad(
    client: Client, redis: fakeredis.FakeRedis, bad: object, reason: str
) -> None:
    good = {"user_id": 1, "book_id": 2, "rating": 4}
    with pytest.raises(BadEvent) as caught:
        client.rate_many([good, good, bad, good])
    assert str(caught.value).startswith(reason)
    assert not redis.exists(STREAM)


def test_rate_many_of_nothing_sends_nothing_and_refuses_a_non_list(client: Client, redis: fakeredis.FakeRedis) -> None:
    assert client.rate_many([]) == []
    with pytest.raises(ValidationError, match="events must be a list of rating events, got dict"):
        client.rate_many({"user_id": 1, "book_id": 2, "rating": 4})
    assert not redis.exists(STREAM)


def test_the_stream_follows_the_key_prefix(redis: fakeredis.FakeRedis) -> None:
    staging = Client(settings=Settings(key_prefix="staging:"), connection=redis)
    staging.rate(1, 2, 3)
    assert redis.xlen("staging:ratings") == 1 and not redis.exists(STREAM)
    assert Keys("staging:").ratings_dead == "staging:ratings:dead" and KEYS.ratings_dead == "bookrec:ratings:dead"


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_redis(redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    monkeypatch.setattr(bookrec.producer.client, "connect", lambda settings: redis)
    for name in ("BOOKREC_KEY_PREFIX", "BOOKREC_RATING_MIN", "BOOKREC_RATING_MAX"):
        monkeypatch.delenv(name, raising=False)
    return redis


def test_bookrec_rate_and_unrate_write_the_stream(cli_redis: fakeredis.FakeRedis, capsys) -> None:
    code, out, err = run_cli(["rate", "42", "8", "4.5", "--ts", "2025-12-01T12:33:20Z", "--event-id", "e-1"], capsys)
    assert (code, err) == (0, "")
    ((stream_id, fields),) = cli_redis.xrange(STREAM)
    assert out == f"user 42 rated book 8 4.5: {STREAM} {stream_id.decode()}\n"
    event = parse_event(fields, stream_id.decode(), 0)
    assert (event.rating, event.ts, event.event_id) == (4.5, 1764592400.0, "e-1")

    code, out, err = run_cli(["unrate", "42", "8", "--json"], capsys)
    assert (code, err) == (0, "")
    reply = json.loads(out)
    last_id, last = cli_redis.xrange(STREAM)[-1]
    assert reply == {"stream": STREAM, "id": last_id.decode(), "user_id": "42", "book_id": "8", "op": "delete"}
    assert parse_event(last, None, 0).op == "delete"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rate", "42", "8", "9"], "rating event 0: rating '9' is outside the scale 0.5 to 5"),
        (["rate", "42", "8", "nan"], "rating event 0: rating 'nan' is not a finite number"),
        (["rate", "4 2", "8", "4"], "rating event 0: user_id '4 2' holds whitespace or glob characters"),
        (["rate", "42", "b*", "4"], "rating event 0: book_id 'b*' holds whitespace or glob characters"),
        (["rate", "42", "8", "4", "--ts", "tomorrow"], "ts 'tomorrow' is not epoch seconds or ISO-8601 UTC"),
        (["rate", "42", "8", "4", "--event-id", ""], "rating event 0: event_id is empty"),
        (["unrate", "", "8"], "rating event 0: user_id is empty"),
        (["rate", "42", "8", "four"], "argument RATING: invalid float value: 'four'"),
        (["rate", "42", "8"], "the following arguments are required: RATING"),
    ],
)
def test_bookrec_rate_refuses_bad_input_in_one_line_with_exit_2(
    cli_redis: fakeredis.FakeRedis, capsys, argv: list[str], message: str
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("bookrec: error: ") and message in err and err.count("\n") == 1
    assert not cli_redis.exists(STREAM)
