"""`bookrec ingest [dead | replay]`: run the ingest (the ratings stream into the ratings store), list its dead letters,
send them back through validation (README: Ingest)."""

from __future__ import annotations

import argparse
import signal

from bookrec.commands.common import print_json, redis_client, table
from bookrec.commands.db import open_store
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings

DESCRIPTION = (
    "Read the ratings stream through the consumer group bookrec-ingest, validate each event, write each batch to the "
    "ratings store (BOOKREC_DATABASE_URL) in one transaction and acknowledge it only after the commit. Run as many "
    "replicas as you like; entries a dead replica left pending are claimed after BOOKREC_INGEST_CLAIM_S. Bad events "
    "go to the dead stream. Serves Prometheus metrics on BOOKREC_INGEST_METRICS_PORT (0: none). Stops after its "
    "current batch on SIGTERM or Ctrl-C."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec ingest`, `bookrec ingest dead` and `bookrec ingest replay`."""
    parser = subparsers.add_parser(
        "ingest", help="run the ingest: the ratings stream into the ratings store", description=DESCRIPTION
    )
    parser.set_defaults(handler=run)
    sub = parser.add_subparsers(dest="ingest_command", metavar="ACTION", parser_class=type(parser))
    dead = sub.add_parser(
        "dead",
        help="list the rating events the ingest refused",
        description="List the dead stream's entries (oldest first): each one's id, reason and original fields.",
    )
    dead.add_argument("--count", type=int, metavar="N", help="list at most N (default: all)")
    dead.add_argument("--json", action="store_true", help='print {"stream", "count", "letters": [...]} as JSON')
    dead.set_defaults(handler=run_dead)
    replay = sub.add_parser(
        "replay",
        help="send the refused events back through validation",
        description="Move every dead letter back to the ratings stream without its reason; the ingest validates it "
        "again (a still-bad one returns to the dead stream with its reason).",
    )
    replay.add_argument("--json", action="store_true", help='print {"replayed"} as JSON')
    replay.set_defaults(handler=run_replay)


def run(args: argparse.Namespace) -> int:
    """Run one ingest consumer until SIGTERM or Ctrl-C."""
    from bookrec.shared.logs import setup_logging
    from bookrec.shared.redis_conn import connect

    settings = Settings.from_env()
    setup_logging(settings.log_level)
    store = open_store(settings.database_url)
    # A blocking read must not outlast the socket timeout.
    client = connect(settings, socket_timeout=settings.ingest_block_ms / 1000 + 5)
    from bookrec.ingest.consumer import Ingest  # after open_store: needs bookrec[store] too
    from bookrec.ingest.lag import LagCollector
    from bookrec.shared.metrics import process_registry, serve

    ingest = Ingest(client, store, settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: ingest.stop.set())
    metrics = None
    try:
        redis_client(settings).close()  # RedisUnavailable at once, in one line, if Redis does not answer
        registry = process_registry(LagCollector(client, ingest.keys))
        metrics = serve(registry, settings.metrics_host, settings.ingest_metrics_port, f"ingest {ingest.name}")
        _steady_gc()
        ingest.run()
    finally:
        if metrics is not None:
            metrics.stop()
        store.close()
    return 0


INGEST_GC_GEN0 = 20_000
"""Allocations between two young-generation collections in `bookrec ingest` (Python's default: 700)."""


def _steady_gc() -> None:
    """Set the garbage collector for a process that builds a thousand short-lived events a batch, none in a cycle:
    what is alive now (modules, the store's engine, connections) is frozen out of every collection, and the young
    generation is collected every INGEST_GC_GEN0 allocations. With Python's defaults the collections took about a
    fifth of the ingest's CPU (README: Benchmarks, Ratings in)."""
    import gc

    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(INGEST_GC_GEN0, middle, old)


def run_dead(args: argparse.Namespace) -> int:
    """List the dead letters."""
    from bookrec.ingest.consumer import dead_letters

    settings = Settings.from_env()
    keys = Keys(settings.key_prefix)
    client = redis_client(settings)
    total = client.xlen(keys.ratings_dead)
    letters = dead_letters(client, keys, args.count)
    if args.json:
        print_json({"stream": keys.ratings_dead, "count": total, "letters": [_letter_json(x) for x in letters]})
        return 0
    print(f"{total} dead letters in {keys.ratings_dead}")
    if letters:
        rows = [
            [x.stream_id, x.reason, " ".join(f"{k}={v}" for k, v in _letter_json(x)["fields"].items())] for x in letters
        ]
        print(table(["id", "reason", "fields"], rows))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Send the dead letters back to the ratings stream."""
    from bookrec.ingest.consumer import replay

    settings = Settings.from_env()
    keys = Keys(settings.key_prefix)
    done = replay(redis_client(settings), keys)
    if args.json:
        print_json({"replayed": done})
    else:
        print(f"replayed {done} dead letters into {keys.ratings_stream}")
    return 0


def _letter_json(letter) -> dict:
    text = lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)  # noqa: E731
    return {
        "id": letter.stream_id,
        "reason": letter.reason,
        "fields": {text(k): text(v) for k, v in letter.fields.items()},
    }
