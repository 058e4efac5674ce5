"""5,000 rating events, 5% of them bad in every way the stream contract names, with duplicates and out-of-order
timestamps (bookrec.bench.ingest_mix's mix, what `python -m bookrec.bench.ingest_mix` sends 100,000 of), through 2
real `bookrec ingest` processes at once on the real Redis, into SQLite and into the real PostgreSQL (a database of
its own, skipped with the reason when PostgreSQL does not answer).

The expected store is computed here from what was sent (`expected_live`: for each (user, book) the good event with
the latest ts, gone if it is a delete), not by the code under test; so are the expected dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import redis

from bookrec.bench import ingest_mix
from bookrec.bench.ingest_mix import Mix, ingest_env
from bookrec.shared.keys import Keys
from tests.conftest import TEST_REDIS_URL
from tests.integration.test_ingest_process import live
from tests.integration.test_ratings_postgres import admin, store  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.integration
KEYS = Keys()


def expected_live(mix: Mix) -> dict[tuple[str, str], float]:
    """The reference model: the live ratings the mix's good events leave, the latest ts winning per (user, book)."""
    latest: dict[tuple[str, str], ingest_mix.MixEvent] = {}
    for event in mix.events:
        pair = (event.user_id, event.book_id)
        if event.good and (pair not in latest or event.ts > latest[pair].ts):
            latest[pair] = event
    return {pair: event.rating for pair, event in latest.items() if event.rating is not None}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ratings store: a new SQLite file, or a new database on the real PostgreSQL (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ratings.db'}"
    else:
        yield request.getfixturevalue("store").url


def test_5000_mixed_events_through_two_ingests_leave_exactly_the_expected_store(
    redis_client: redis.Redis, database: str, tmp_path: Path
) -> None:
    mix = ingest_mix.generate(5000)
    env = ingest_env(TEST_REDIS_URL, database, BOOKREC_INGEST_CLAIM_S="1", BOOKREC_INGEST_BLOCK_MS="100")

    result = ingest_mix.run(redis_client, KEYS, env, mix, tmp_path, processes=2, timeout=120)

    counts = (result.applied, result.dead, result.lost, result.twice, result.wrong, result.left)
    assert counts == (4750, 250, 0, 0, 0, 0), result.examples
    assert result.exit_codes == [0, 0] and result.ok
    assert live(database) == expected_live(mix), "for each (user, book) the latest ts wins, and each event once"
    letters = [(int(f[b"mix_seq"]), f[b"reason"].decode()) for _, f in redis_client.xrange(KEYS.ratings_dead)]
    assert sorted(letters) == [(e.seq, e.bad.reason) for e in mix.events if e.bad], "each bad one once, its reason"
    assert redis_client.xpending(KEYS.ratings_stream, "bookrec-ingest")["pending"] == 0
