"""`bookrec bench`: benchmark the real service (Redis, worker processes) and print each figure beside its target."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from bookrec.bench import DEFAULT_POSTGRES, PHASES
from bookrec.commands.common import needs_worker_side, print_json
from bookrec.shared.payloads import DEFAULT_MODEL_KIND, MODEL_KINDS
from bookrec.shared.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec bench`."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the service on a goodbooks-sized synthetic catalogue",
        description="Run the real service (Redis, `bookrec worker` processes) on a synthetic goodbooks-shaped "
        "catalogue (53,424 users x 10,000 books, ~1M ratings; --quick: 5,000 x 2,000, 100,000) and print each "
        "figure beside its target and a reference measured in the same run. Three phases: serving (recommend "
        "throughput and latency, refresh, cache reads, hot swap, retrain, memory), ratings (real `bookrec "
        "ingest` processes into SQLite and PostgreSQL, bulk import, snapshots) and fresh (a rating event to the "
        "reader's recomputed list under load, scoring from current histories, worker memory over 1,000,000 "
        "ingested ratings); --only runs one. The catalogue "
        "and its base model are cached under --cache-dir, so only the first run generates and trains them. Uses "
        "a Redis database of its own (--redis-db), flushed at the end, and PostgreSQL databases of its own on "
        "the --postgres server, dropped at the end. Timings are medians over repeats; the machine's other load "
        "is reported beside them.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smaller catalogue and fewer requests (under 2 minutes once cached)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print {machine, figures, targets, ...} as JSON instead of a table"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the table as Markdown, every cell whole (for the README); the default table fits 100 columns",
    )
    parser.add_argument(
        "--only",
        choices=PHASES,
        help="run one phase: serving (the recommend path), ratings (ingest, import, snapshot) or fresh (fresh "
        "lists); default all three",
    )
    parser.add_argument(
        "--model",
        choices=MODEL_KINDS,
        help=f"the kind of the base model the serving and fresh phases serve (default: {DEFAULT_MODEL_KIND}); "
        "each kind's base model is cached apart",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        metavar="URL",
        help="PostgreSQL server for the ratings phase, which creates databases bookrec_bench_<random> there and "
        f"drops them (default: {DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--redis-db",
        type=int,
        default=12,
        metavar="N",
        help="Redis database for the benchmark, on BOOKREC_REDIS_URL's server (default: 12); must be empty",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("var/bench"),
        metavar="DIR",
        help="where the catalogue and base model are cached (default: var/bench)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the report."""
    needs_worker_side("bookrec bench")
    if args.only != "ratings":
        from bookrec.worker.serve.tf_setup import configure_tensorflow

        configure_tensorflow(1)  # before the serving phase imports TensorFlow: quietly, one thread like each worker
    from bookrec.bench.catalogue import REAL_BOOKS
    from bookrec.bench.figures import markdown, text
    from bookrec.bench.harness import Config
    from bookrec.bench.harness import run as run_bench
    from bookrec.bench.service import with_db

    settings = Settings.from_env()
    url = with_db(settings.redis_url, args.redis_db)
    config = (Config.quick_run if args.quick else Config.full)(url, args.cache_dir, REAL_BOOKS)
    config = replace(
        config,
        phases=(args.only,) if args.only else PHASES,
        model=args.model,
        ratings=replace(config.ratings, postgres_url=args.postgres),
    )
    report = run_bench(config, notify=lambda message: print(f"bench: {message}", file=sys.stderr, flush=True))
    if args.json:
        print_json(report.to_json())
    elif args.markdown:
        print(markdown(report))
    else:
        print(text(report))
    return 0
