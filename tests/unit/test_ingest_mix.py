"""The ingest benchmark's mix (bookrec.bench.ingest_mix.generate) is what it says: its labels agree with the stream
contract's parse_event, every bad kind is in it, good events have a ts each, and it holds duplicates and events sent
out of ts order; so the integration test and the benchmark built on it test what they claim."""

from __future__ import annotations

import pytest

from bookrec.bench.ingest_mix import BAD_KINDS, SEQ, generate
from bookrec.shared.errors import BadEvent
from bookrec.shared.ratings import EVENT_ID, parse_event


@pytest.fixture(scope="module")
def mix():
    return generate(5000)


def test_each_event_is_good_or_bad_as_the_contract_says_with_the_reason_it_gives(mix) -> None:
    for event in mix.events:
        if event.good:
            parsed = parse_event(event.fields, "1-0", 1)
            assert (parsed.user_id, parsed.book_id, parsed.rating, parsed.ts) == (
                event.user_id,
                event.book_id,
                event.rating,
                event.ts,
            )
        else:
            with pytest.raises(BadEvent) as refused:
                parse_event(event.fields, "1-0", 1)
            assert refused.value.reason == event.bad.reason, event.bad.name


def test_five_percent_are_bad_in_every_way_and_good_events_each_have_their_own_ts(mix) -> None:
    assert (len(mix.events), mix.good, mix.bad) == (5000, 4750, 250)
    assert {e.bad.name for e in mix.events if e.bad} == {k.name for k in BAD_KINDS}
    assert len({e.ts for e in mix.events if e.good}) == mix.good


def test_it_holds_duplicates_and_events_sent_out_of_ts_order(mix) -> None:
    first, later = mix.rounds
    assert sorted({seq for seq, _ in first}) == list(range(5000)), "round 1 sends every event"
    resent = len(first) - 5000
    behind = sum(a[0] == b[0] for a, b in zip(first, first[1:]))
    assert resent > 200 and 0 < behind < resent, "re-sends right behind their event and later"
    assert all(EVENT_ID in mix.events[seq].fields for seq, _ in later)
    changed = [(seq, fields) for seq, fields in later if fields != mix.events[seq].fields]
    assert changed and all(fields[EVENT_ID] == mix.events[seq].fields[EVENT_ID] for seq, fields in changed)
    assert all(int(fields[SEQ]) == seq for seq, fields in first + later)
    newest: dict[tuple[str, str], float] = {}
    out_of_order = 0
    for seq, _ in first:
        event = mix.events[seq]
        pair = (event.user_id, event.book_id)
        if event.good:
            out_of_order += event.ts < newest.get(pair, 0)
            newest[pair] = max(event.ts, newest.get(pair, 0))
    assert out_of_order > 1000, "many events arrive after a newer one for their (user, book)"


def test_the_same_seed_gives_the_same_mix() -> None:
    assert generate(300, seed=7) == generate(300, seed=7) != generate(300, seed=8)
