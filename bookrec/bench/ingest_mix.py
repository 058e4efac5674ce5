"""`python -m bookrec.bench.ingest_mix [--events N]`: N rating events, 5% of them bad in every way the ratings stream's
contract names, with duplicates and out-of-order timestamps, through 2 real `bookrec ingest` processes at once;
counts what was applied, dead-lettered, lost and applied twice against what the mix was built to give.

The mix (`generate`) is built from the contract's rules as the README words them, not from the code that enforces
them: each bad event breaks exactly one rule and carries the reason the README gives for it; each good event has a
ts of its own, so the latest one per (user, book) is one event whatever order the ingest processes apply them in.
Duplicates are not events: exact re-sends of an entry with an event_id (some right behind it, some later) and, once
the first round is ingested, copies with the same event_id but a newer ts and another rating. Every entry carries
the extra field `mix_seq` (the contract ignores other fields; a dead letter keeps them) naming its event.

`run` counts from the store's `applied_events` (the stream id of every applied event) and the dead stream: `applied`
good events with an entry applied, `twice` those with two or more applied, `dead` bad events dead-lettered, `lost`
good events with none applied and bad ones not dead-lettered, `wrong` bad events dead-lettered with another reason
or twice, or applied, and good events dead-lettered. It passes when `applied` is the number of good events, `dead`
the number of bad ones, every other count 0, nothing is left in the stream and each ingest exits 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import redis
import sqlalchemy as sa

from bookrec.bench import machine
from bookrec.ingest.consumer import GROUP, group_info
from bookrec.ratings.schema import applied_events, ratings
from bookrec.ratings.store import RatingsStore, stream_id_key
from bookrec.shared.errors import BookrecError, ValidationError
from bookrec.shared.keys import Keys
from bookrec.shared.ratings import BOOK_ID, EVENT_ID, OP, OP_DELETE, OP_RATE, RATING, REASON, TS, USER_ID
from bookrec.shared.redis_conn import text
from bookrec.shared.settings import Settings, redact_url
from bookrec.worker.serve.launch import IngestProcess

SEQ = "mix_seq"
"""The extra field naming the event an entry belongs to (ignored by the ingest, kept in a dead letter)."""
TS0 = 1_700_000_000  # the first event's time; every good event's ts is TS0 + a second of its own (+0.25 for some)
HALF_STARS = tuple(x / 2 for x in range(1, 11))
SEND_CHUNK = 1000  # entries per XADD pipeline
DEFAULT_REDIS_DB = 10

Fields = dict[str, "str | bytes"]
Progress = Callable[[int, int], None]
"""A progress callback: (entries ingested so far, entries sent in all)."""


@dataclass(frozen=True)
class BadKind:
    """One way an event breaks the contract: how its fields are changed and the dead letter's reason (README)."""

    name: str
    field: str
    value: str | bytes | None  # None: the field is left out
    reason: str

    def apply(self, fields: Fields) -> Fields:
        """`fields` broken this way."""
        broken = {k: v for k, v in fields.items() if k != self.field}
        if self.value is not None:
            broken[self.field] = self.value
        return broken


BAD_KINDS = (
    BadKind("missing user_id", USER_ID, None, "missing user_id"),
    BadKind("missing book_id", BOOK_ID, None, "missing book_id"),
    BadKind("missing rating", RATING, None, "missing rating"),
    BadKind("rating NaN", RATING, "nan", "rating 'nan' is not a finite number"),
    BadKind("rating -infinity", RATING, "-inf", "rating '-inf' is not a finite number"),
    BadKind("rating above the scale", RATING, "7", "rating '7' is outside the scale 0.5 to 5"),
    BadKind("rating below the scale", RATING, "0", "rating '0' is outside the scale 0.5 to 5"),
    BadKind("rating not a number", RATING, "four", "rating 'four' is not a number"),
    BadKind("user_id empty", USER_ID, "", "user_id is empty"),
    BadKind("event_id empty", EVENT_ID, "", "event_id is empty"),
    BadKind(  # 65 characters, 130 bytes: too long in bytes, not in characters
        "book_id over 128 bytes", BOOK_ID, "é" * 65, f"book_id '{'é' * 59}… (67 characters) is longer than 128 bytes"
    ),
    BadKind("user_id with a space", USER_ID, "reader 7", "user_id 'reader 7' holds whitespace or glob characters"),
    BadKind("book_id with a tab", BOOK_ID, "b\t7", "book_id 'b\\t7' holds whitespace or glob characters"),
    BadKind("book_id with a glob character", BOOK_ID, "b*", "book_id 'b*' holds whitespace or glob characters"),
    BadKind("event_id with glob characters", EVENT_ID, "e[1]", "event_id 'e[1]' holds whitespace or glob characters"),
    BadKind("user_id not UTF-8", USER_ID, b"\xffu", "user_id b'\\xffu' is not UTF-8 text"),
    BadKind("ts not a time", TS, "yesterday", "ts 'yesterday' is not epoch seconds or ISO-8601 UTC"),
    BadKind("ts negative", TS, "-1", "ts '-1' is not epoch seconds or ISO-8601 UTC"),
    BadKind("ts infinite", TS, "inf", "ts 'inf' is not epoch seconds or ISO-8601 UTC"),
    BadKind(
        "ts not in UTC",
        TS,
        "2026-12-01T12:00:00+02:00",
        "ts '2026-12-01T12:00:00+02:00' is not in UTC; give it with Z or +00:00",
    ),
    BadKind("op unknown", OP, "remove", "op 'remove' is not rate or delete"),
)
"""Every way the README's Ratings stream section says an event is bad, each with the reason it gives."""


@dataclass(frozen=True)
class MixEvent:
    """One event of the mix: the fields of its entry and what it means (for a bad one, the reason expected)."""

    seq: int
    fields: Fields
    user_id: str
    book_id: str
    rating: float | None  # None for a delete
    ts: float
    bad: BadKind | None = None

    @property
    def good(self) -> bool:
        """Whether the event keeps the contract."""
        return self.bad is None


@dataclass(frozen=True)
class Mix:
    """The events, and the entries to send in rounds (each an event's seq and the fields to XADD), a round being
    sent once the one before is ingested."""

    events: list[MixEvent]
    rounds: list[list[tuple[int, Fields]]]

    @property
    def good(self) -> int:
        """How many events are good: what the store must apply."""
        return sum(e.good for e in self.events)

    @property
    def bad(self) -> int:
        """How many events are bad: what the dead stream must receive."""
        return len(self.events) - self.good

    @property
    def entries(self) -> int:
        """How many entries the rounds send in all (events and duplicates)."""
        return sum(len(r) for r in self.rounds)


def generate(events: int, bad_fraction: float = 0.05, resend_fraction: float = 0.1, seed: int = 0) -> Mix:
    """`events` events, `bad_fraction` of them bad (every BadKind in turn, at random places), about 5 per (user,
    book) in random ts order, 60% of the good ones with an event_id; `resend_fraction` of those re-sent as they were
    in round 1, and in round 2 a fifth as many again, and as many copies with their event_id but a newer ts and
    another rating (none of which may change the store)."""
    if events < 1:
        raise ValidationError(f"a mix needs at least 1 event, got {events}")
    rng = random.Random(seed)
    bad_at = sorted(rng.sample(range(events), round(events * bad_fraction)))
    kinds = {seq: BAD_KINDS[i % len(BAD_KINDS)] for i, seq in enumerate(bad_at)}
    users, stamps = max(5, events // 100), rng.sample(range(events * 4), events)
    made = [
        _event(rng, seq, users, TS0 + stamps[seq] + (0.25 if seq % 3 == 0 else 0), kinds.get(seq))
        for seq in range(events)
    ]
    keyed = [e for e in made if e.good and EVENT_ID in e.fields]
    first = _first_round(rng, made, rng.sample(keyed, round(len(keyed) * resend_fraction)))
    changed = rng.sample(keyed, round(len(keyed) * resend_fraction / 5))
    later = [(e.seq, _newer_copy(e, TS0 + events * 4 + i)) for i, e in enumerate(changed)]
    later += [(e.seq, e.fields) for e in rng.sample(keyed, len(changed))]
    rng.shuffle(later)
    return Mix(made, [first, later])


def _event(rng: random.Random, seq: int, users: int, ts: float, bad: BadKind | None) -> MixEvent:
    """One event on a random (user, book) at `ts`: good (a rate, one in ten a delete) or broken the `bad` way."""
    user, book = f"u{rng.randrange(users)}", f"b{rng.randrange(20)}"
    fields: Fields = {SEQ: str(seq), USER_ID: user, BOOK_ID: book, TS: _ts_text(rng, ts)}
    rating: float | None = rng.choice(HALF_STARS)
    if bad is None and rng.random() < 0.1:
        fields[OP], rating = OP_DELETE, None
        if rng.random() < 0.5:
            fields[RATING] = "3"  # a delete ignores a rating
    else:
        fields[RATING] = _rating_text(rng, rating)
        if rng.random() < 0.3:
            fields[OP] = OP_RATE
    if bad is not None or rng.random() < 0.6:
        fields[EVENT_ID] = f"mix-{seq}"
    if bad is not None:
        fields = bad.apply(fields)
    return MixEvent(seq, fields, user, book, rating, ts, bad)


def _ts_text(rng: random.Random, ts: float) -> str:
    """`ts` in one of the contract's forms: epoch seconds, or for a whole second ISO-8601 with Z, +00:00 or none."""
    if not float(ts).is_integer():
        return repr(float(ts))
    form = rng.randrange(4)
    if form == 0:
        return str(int(ts))
    iso = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return iso + ("Z", "+00:00", "")[form - 1]


def _rating_text(rng: random.Random, rating: float) -> str:
    """`rating` as text: `4` or `4.0` for a whole star, `4.5` for a half."""
    if rating.is_integer() and rng.random() < 0.5:
        return str(int(rating))
    return repr(rating)


def _first_round(rng: random.Random, events: list[MixEvent], resent: list[MixEvent]) -> list[tuple[int, Fields]]:
    """Every event once in random order, and each of `resent` again: half right behind it, half later."""
    order = list(range(len(events)))
    rng.shuffle(order)
    position = {seq: i for i, seq in enumerate(order)}
    keyed = [(float(i), seq) for i, seq in enumerate(order)]
    for n, event in enumerate(resent):
        at = position[event.seq]
        keyed.append((at + 0.5 if n % 2 == 0 else rng.uniform(at + 1, len(order)), event.seq))
    return [(seq, events[seq].fields) for _, seq in sorted(keyed)]


def _newer_copy(event: MixEvent, ts: float) -> Fields:
    """`event`'s fields with its event_id, a newer `ts` and another rating: applied, it would win its pair."""
    rating = 5.0 if event.rating != 5.0 else 1.0
    return {SEQ: str(event.seq), USER_ID: event.user_id, BOOK_ID: event.book_id, RATING: repr(rating),
            TS: str(int(ts)), EVENT_ID: str(event.fields[EVENT_ID])}  # fmt: skip


def ingest_env(redis_url: str, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of an ingest process: this one's without any BOOKREC_* setting, then the URLs and
    `settings` (e.g. BOOKREC_INGEST_CLAIM_S="1")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.update(BOOKREC_REDIS_URL=redis_url, BOOKREC_DATABASE_URL=database_url, **settings)
    return env


@dataclass
class MixResult:
    """What a run found, against what the mix was built to give (see the module's docstring)."""

    events: int
    good: int
    bad: int
    entries: int
    processes: int
    store: str
    applied: int = 0
    dead: int = 0
    lost: int = 0
    twice: int = 0
    wrong: int = 0
    left: int = 0  # entries still pending or unread at the end
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    entries_per_s: float = 0.0
    other_cores: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every good event applied once, every bad one dead-lettered once with its reason, nothing else."""
        clean = self.lost == self.twice == self.wrong == self.left == 0
        return clean and (self.applied, self.dead) == (self.good, self.bad) and set(self.exit_codes) == {0}

    def note(self, problem: str, example: str) -> None:
        """Keep the first few examples of a problem."""
        kept = self.examples.setdefault(problem, [])
        if len(kept) < 5:
            kept.append(example)


def run(
    client: redis.Redis,
    keys: Keys,
    env: dict[str, str],
    mix: Mix,
    log_dir: Path,
    processes: int = 2,
    timeout: float = 1800.0,
    progress: Progress | None = None,
) -> MixResult:
    """Start `processes` ingest processes with `env` (its BOOKREC_DATABASE_URL an empty store), send the mix's
    rounds to `keys`' ratings stream on `client`, each once the round before is ingested, stop the processes with
    SIGTERM and count what happened."""
    store = RatingsStore(env["BOOKREC_DATABASE_URL"])
    try:
        store.upgrade()
        _refuse_used(store)
        result = MixResult(len(mix.events), mix.good, mix.bad, mix.entries, processes, store.engine.dialect.name)
        meter, deadline = machine.CpuMeter.start(), time.monotonic() + timeout
        ingests = [IngestProcess(env, log_dir / f"ingest-{i}.log") for i in range(processes)]
        try:
            _await(lambda: len(_consumers(client, keys)) >= processes, ingests, deadline)
            started = time.monotonic()
            ids = _send(client, keys, mix, ingests, deadline, progress)
            result.seconds = round(time.monotonic() - started, 2)
        finally:
            for ingest in ingests:
                ingest.process.terminate()  # all at once, and once: each stops after its current batch
            result.exit_codes = [p.wait(30) for p in ingests]
        result.entries_per_s = round(mix.entries / result.seconds, 1) if result.seconds else 0.0
        result.other_cores = round(meter.cores_used_by_others(), 2)
        _tally(result, client, keys, store, mix, ids)
        return result
    finally:
        store.close()


def _refuse_used(store: RatingsStore) -> None:
    """ValidationError unless the store holds no rating and no applied event (the counts assume it starts empty)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(ratings)).scalar()
        applied = conn.execute(sa.select(sa.func.count()).select_from(applied_events)).scalar()
    if rows or applied:
        raise ValidationError(
            f"the ratings store at {redact_url(store.url)} holds {rows} ratings and {applied} applied events; "
            "the mix needs an empty one (a new database)"
        )


def _send(
    client: redis.Redis,
    keys: Keys,
    mix: Mix,
    ingests: list[IngestProcess],
    deadline: float,
    progress: Progress | None,
) -> dict[int, list[str]]:
    """XADD each round in pipelines, then wait until the group has read and acknowledged all of it; the stream ids
    sent for each event."""
    ids: dict[int, list[str]] = {e.seq: [] for e in mix.events}
    done_before = 0
    for entries in mix.rounds:
        last = ""
        for start in range(0, len(entries), SEND_CHUNK):
            chunk = entries[start : start + SEND_CHUNK]
            with client.pipeline(transaction=False) as pipe:
                for _seq, fields in chunk:
                    pipe.xadd(keys.ratings_stream, fields)
                for (seq, _fields), stream_id in zip(chunk, pipe.execute()):
                    last = stream_id.decode()
                    ids[seq].append(last)
        if last:
            _await_ingested(client, keys, last, ingests, deadline, progress, done_before, mix.entries)
        done_before += len(entries)
    return ids


def _await_ingested(
    client: redis.Redis,
    keys: Keys,
    last: str,
    ingests: list[IngestProcess],
    deadline: float,
    progress: Progress | None,
    done_before: int,
    total: int,
) -> None:
    """Wait until the group has delivered `last` and nothing is pending, reporting progress."""

    def ingested() -> bool:
        group = group_info(client, keys.ratings_stream)
        if group is None:
            return False
        pending = int(group["pending"])
        if progress:
            progress(min(done_before + max(int(group.get("entries-read") or 0) - pending, 0), total), total)
        return text(group["last-delivered-id"]) == last and pending == 0

    _await(ingested, ingests, deadline)


def _await(condition: Callable[[], bool], ingests: list[IngestProcess], deadline: float) -> None:
    """Poll `condition` until it holds or `deadline` passes (the counts then show what is missing); BookrecError if
    an ingest process exits meanwhile."""
    while not condition() and time.monotonic() < deadline:
        for process in ingests:
            if process.exit_code() is not None:
                raise BookrecError(
                    f"an ingest process exited with {process.exit_code()} during the mix: {process.log_tail(1500)}"
                )
        time.sleep(0.05)


def _consumers(client: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    """The ingest group's consumers (one per ingest process, once it has read), none before the group exists."""
    if group_info(client, keys.ratings_stream) is None:
        return []
    return client.xinfo_consumers(keys.ratings_stream, GROUP)


def _tally(
    result: MixResult, client: redis.Redis, keys: Keys, store: RatingsStore, mix: Mix, ids: dict[int, list[str]]
) -> None:
    """Count each event's fate (see MixResult) and what is left in the stream."""
    with store.engine.connect() as conn:
        query = sa.select(applied_events.c.id).where(applied_events.c.kind == "stream")
        applied = set(conn.execute(query).scalars())
    letters: dict[int, list[str]] = {}
    for stream_id, fields in client.xrange(keys.ratings_dead):
        seq = fields.get(SEQ.encode())
        if seq is None or not seq.isdigit() or int(seq) not in ids:
            result.wrong += 1
            result.note("dead letter of no event sent", f"{text(stream_id)}: {fields!r}")
            continue
        letters.setdefault(int(seq), []).append(fields.get(REASON.encode(), b"").decode("utf-8", "replace"))
    for event in mix.events:
        times_applied = sum(i in applied for i in ids[event.seq])
        (_count_good if event.good else _count_bad)(result, event, times_applied, letters.get(event.seq, []))
    result.left = _left(client, keys, [i for sent in ids.values() for i in sent])


def _count_good(result: MixResult, event: MixEvent, times_applied: int, letters: list[str]) -> None:
    if times_applied == 0:
        result.lost += 1
        result.note("good event lost", f"event {event.seq}: {event.fields!r}")
    else:
        result.applied += 1
    if times_applied > 1:
        result.twice += 1
        result.note("applied twice", f"event {event.seq} applied {times_applied} times: {event.fields!r}")
    if letters:
        result.wrong += 1
        result.note("good event dead-lettered", f"event {event.seq} ({letters[0]}): {event.fields!r}")


def _count_bad(result: MixResult, event: MixEvent, times_applied: int, letters: list[str]) -> None:
    assert event.bad is not None
    if not letters:
        result.lost += 1
        result.note("bad event not dead-lettered", f"event {event.seq} ({event.bad.name}): {event.fields!r}")
    else:
        result.dead += 1
    if len(letters) > 1 or any(r != event.bad.reason for r in letters) or times_applied:
        result.wrong += 1
        result.note(
            "bad event with another fate",
            f"event {event.seq} ({event.bad.name}): reasons {letters!r}, expected {event.bad.reason!r}, "
            f"applied {times_applied} times",
        )


def _left(client: redis.Redis, keys: Keys, sent: list[str]) -> int:
    """Entries still pending in the group, plus entries sent that it never delivered."""
    group = group_info(client, keys.ratings_stream)
    if group is None:
        return len(sent)
    delivered = stream_id_key(text(group["last-delivered-id"]))
    return int(group["pending"]) + sum(stream_id_key(i) > delivered for i in sent)


def markdown(result: MixResult, host: dict[str, Any]) -> str:
    """The result as the Markdown table README and bench/RESULTS.md show."""
    met = lambda ok: "yes" if ok else "NO"  # noqa: E731
    rows = [
        ("applied (good events, each once)", f"{result.applied:,}", f"{result.good:,}", met(result.applied == result.good)),
        ("dead-lettered with the expected reason", f"{result.dead:,}", f"{result.bad:,}", met(result.dead == result.bad)),
        ("lost", f"{result.lost}", "0", met(result.lost == 0)),
        ("applied twice", f"{result.twice}", "0", met(result.twice == 0)),
        ("wrong fate (wrong reason, dead twice, bad applied, good dead)", f"{result.wrong}", "0", met(result.wrong == 0)),
        ("left in the stream (pending or unread)", f"{result.left}", "0", met(result.left == 0)),
        ("ingest exit codes on SIGTERM", ", ".join(map(str, result.exit_codes)), "0", met(set(result.exit_codes) == {0})),
        ("time, throughput", f"{result.seconds:,.1f} s, {result.entries_per_s:,.0f} entries/s", "-", "-"),
    ]  # fmt: skip
    head = (
        f"`python -m bookrec.bench.ingest_mix --events {result.events}` on {host['date']}: {host['cores']} cores "
        f"({host['cpu']}), {result.store}; {result.events:,} events ({result.good:,} good, {result.bad:,} bad in "
        f"{len(BAD_KINDS)} ways) in {result.entries:,} entries through {result.processes} ingest processes. "
        f"Other processes used {result.other_cores:.2f} cores on average during the run "
        f"({'BUSY' if result.other_cores > machine.BUSY_CORES else 'quiet'}); load average at the end "
        f"{host['load_average'][0]:.2f}."
    )
    table = ["| count | measured | expected | met |", "|---|---|---|---|", *(f"| {' | '.join(r)} |" for r in rows)]
    return "\n".join([head, "", *table, "", "PASS" if result.ok else "FAIL"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bookrec.bench.ingest_mix`."""
    from tqdm import tqdm

    from bookrec.bench.service import Service, with_db

    args = _parser().parse_args(argv)
    redis_url = args.redis_url or with_db(Settings.from_env().redis_url, DEFAULT_REDIS_DB)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    mix = generate(args.events, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bookrec-ingest-mix-") as scratch:
        database_url = args.database_url or f"sqlite:///{Path(scratch) / 'ratings.db'}"
        service = Service.claim(redis_url, args.log_dir, args.log_dir)  # an empty database of its own, prefix bench:
        env = ingest_env(service.settings.redis_url, database_url, BOOKREC_KEY_PREFIX=service.keys.prefix)
        print(
            f"ingest mix: {args.events:,} events, {mix.entries:,} entries, {args.processes} ingest processes, store "
            f"{redact_url(database_url)}, Redis {service.settings.redis_url_redacted} (logs in {args.log_dir})",
            file=sys.stderr,
        )
        with tqdm(total=mix.entries, unit="entries", desc="ingested", file=sys.stderr) as bar:
            progress = lambda done, total: bar.update(done - bar.n)  # noqa: E731
            try:
                result = run(service.client, service.keys, env, mix, args.log_dir, args.processes, progress=progress)
            finally:
                service.release()
    host = machine.host()
    if args.json:
        print(json.dumps({"machine": host, **asdict(result), "ok": result.ok}, indent=2))
    else:
        print(markdown(result, host))
    return 0 if result.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bookrec.bench.ingest_mix", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=_count, default=100_000, metavar="N", help="events in the mix (default: 100,000)"
    )
    parser.add_argument("--processes", type=_count, default=2, metavar="P", help="ingest processes (default: 2)")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="an empty ratings store (default: a new SQLite file in a temporary directory, deleted after)",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"a Redis database of its own, empty or left by a benchmark, flushed after (default: BOOKREC_REDIS_URL's "
        f"server, database {DEFAULT_REDIS_DB})",
    )
    parser.add_argument("--seed", type=int, default=0, help="the mix's random seed (default: 0)")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path("var/bench/ingest-mix"),
        metavar="DIR",
        help="where the ingest processes log (default: var/bench/ingest-mix)",
    )
    parser.add_argument("--json", action="store_true", help="print the counts as JSON instead of a Markdown table")
    return parser


def _count(value: str) -> int:
    """A whole number of at least 1, for argparse."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value!r}")
    return number


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BookrecError as exc:
        print(f"ingest_mix: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
