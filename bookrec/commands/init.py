"""`bookrec init`: first-run setup — migrate the ratings store, fill it from the data dir when it holds no ratings
(synthesising the data first if there is none: readers of goodbooks-10k's real books, which bookrec ships), train the
first model on it and promote it.

Trains and promotes nothing when the model store already has a production model, so it is safe as a one-shot
service in docker compose that runs on every `up`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bookrec.commands.common import needs_worker_side, redis_client, show_progress
from bookrec.commands.data import import_books_file, import_ratings_file, imported_books, imported_ratings
from bookrec.commands.db import open_store, upgrade_store
from bookrec.shared.keys import Keys
from bookrec.shared.payloads import DEFAULT_BOOKS, RATINGS_FILE
from bookrec.shared.settings import Settings, redact_url
from bookrec.worker.learn.inputs import PRESETS, ReadOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec init`."""
    parser = subparsers.add_parser(
        "init",
        help="first run: fill the ratings store (synthesising data if missing), train and promote the first model",
        description="Migrate the ratings store (BOOKREC_DATABASE_URL). If it holds no ratings, import "
        "BOOKREC_DATA_DIR's ratings.csv and books.csv into it, first writing synthetic ratings of real books there "
        "(goodbooks-10k's, shipped with bookrec, or --books-from's) when ratings.csv is missing and no model is in "
        "production. If BOOKREC_MODEL_STORE has no production "
        "model, train the default model on the store's ratings and promote it; otherwise make sure Redis points at "
        "the production model and exit.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="small", help="size of the synthetic catalogue (default: small)"
    )
    parser.add_argument(
        "--books-from",
        type=Path,
        metavar="FILE",
        help="the books file whose books the synthetic readers rate (default: goodbooks-10k's, shipped with bookrec)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training (default: 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Initialise the ratings store and the model store (idempotent)."""
    needs_worker_side("bookrec init")
    from bookrec.model_store.promotion import current_version, promote
    from bookrec.model_store.store import ModelStore

    settings = Settings.from_env()
    print(f"ratings store is at revision {upgrade_store(settings)}")
    client = redis_client(settings)
    keys = Keys(settings.key_prefix)
    store = ModelStore(settings.model_store)
    initialised = store.production() is not None
    _fill_ratings_store(settings, args, may_synthesise=not initialised)
    if initialised:
        print(f"model store already initialised: {current_version(store, client, keys)} is in production")
        return 0
    from bookrec.worker.serve.tf_setup import configure_tensorflow

    configure_tensorflow(threads=0)
    from bookrec.worker.learn.pipeline import TrainRequest, train_version
    from bookrec.worker.serve.store_ratings import read_store

    books = settings.data_dir / DEFAULT_BOOKS
    request = TrainRequest(
        ratings=read_store(settings.database_url), books=books if books.exists() else None, seed=args.seed
    )
    result = train_version(store, request)
    promote(store, client, keys, result["version"], reason="bookrec init", refresh=settings)
    print(f"trained and promoted {result['version']} ({result['model']}, ndcg@10 {result['metrics']['ndcg@10']:.4f})")
    return 0


def _fill_ratings_store(settings: Settings, args: argparse.Namespace, may_synthesise: bool) -> None:
    """Import BOOKREC_DATA_DIR's ratings.csv (and books.csv, if there) into the ratings store if it holds no ratings,
    synthesising both first when ratings.csv is missing and `may_synthesise`; print what was done."""
    ratings_store = open_store(settings.database_url)
    try:
        empty = not ratings_store.has_ratings()
    finally:
        ratings_store.close()
    database = redact_url(settings.database_url)
    if not empty:
        print(f"ratings store {database} already holds ratings; nothing imported")
        return
    ratings, books = settings.data_dir / RATINGS_FILE, settings.data_dir / DEFAULT_BOOKS
    if not ratings.exists() and may_synthesise:
        from bookrec.worker.learn.synth import synthesise_readers

        catalogue = {"catalogue": args.books_from} if args.books_from is not None else {}
        summary = synthesise_readers(settings.data_dir, seed=args.seed, **PRESETS[args.preset], **catalogue)
        print(
            f"synthesised {summary['ratings']:,} ratings by {summary['users']:,} readers of {summary['books']:,} real "
            f"books from {summary['books_from']} into {settings.data_dir}"
        )
    if not ratings.exists():
        print(
            f"bookrec: warning: ratings store {database} holds no ratings and {ratings} does not exist: retrains fail "
            "until it is filled (`bookrec data import FILE`, or the ratings stream and `bookrec ingest`)",
            file=sys.stderr,
        )
        return
    show = show_progress(as_json=False)
    print(imported_ratings(import_ratings_file(settings.database_url, ratings, ReadOptions(), show)))
    if books.exists():
        print(imported_books(import_books_file(settings.database_url, books, show)))
