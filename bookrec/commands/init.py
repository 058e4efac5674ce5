"""`bookrec init`: first-run setup — migrate the ratings store, synthesise data if there is none, train and promote
the first model.

Does nothing when the store already has a production model, so it is safe as a one-shot
service in docker compose that runs on every `up`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bookrec.commands.common import needs_worker_side, redis_client
from bookrec.commands.db import upgrade_store
from bookrec.shared.keys import Keys
from bookrec.shared.settings import Settings
from bookrec.worker.learn.inputs import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec init`."""
    parser = subparsers.add_parser(
        "init",
        help="first run: synthesise data if missing, train and promote the first model",
        description="If BOOKREC_MODEL_STORE has no production model: write a synthetic goodbooks-shaped catalogue "
        "into BOOKREC_DATA_DIR unless ratings.csv is already there, train the default model on it and promote it. "
        "Otherwise make sure Redis points at the production model and exit.",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="small", help="size of the synthetic catalogue (default: small)"
    )
    parser.add_argument(
        "--books-from", type=Path, metavar="FILE", help="real goodbooks books.csv for titles and authors"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training (default: 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Initialise the store (idempotent)."""
    needs_worker_side("bookrec init")
    from bookrec.model_store.promotion import current_version, promote
    from bookrec.model_store.store import ModelStore

    settings = Settings.from_env()
    print(f"ratings store is at revision {upgrade_store(settings)}")
    client = redis_client(settings)
    keys = Keys(settings.key_prefix)
    store = ModelStore(settings.model_store)
    if store.production() is not None:
        print(f"model store already initialised: {current_version(store, client, keys)} is in production")
        return 0
    ratings, books = settings.data_dir / "ratings.csv", settings.data_dir / "books.csv"
    if not ratings.exists():
        from bookrec.worker.learn.synth import synthesise

        summary = synthesise(settings.data_dir, seed=args.seed, books_from=args.books_from, **PRESETS[args.preset])
        print(f"synthesised {summary['ratings']:,} ratings into {settings.data_dir}")
    from bookrec.worker.serve.tf_setup import configure_tensorflow

    configure_tensorflow(threads=0)
    from bookrec.worker.learn.pipeline import TrainRequest, train_version

    result = train_version(
        store, TrainRequest(ratings=ratings, books=books if books.exists() else None, seed=args.seed)
    )
    promote(store, client, keys, result["version"], reason="bookrec init", refresh=settings)
    print(f"trained and promoted {result['version']} ({result['model']}, ndcg@10 {result['metrics']['ndcg@10']:.4f})")
    return 0
