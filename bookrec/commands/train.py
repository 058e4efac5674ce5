"""`bookrec train`: train a model version from a ratings file or the ratings store, print its metrics beside the
baselines.

TensorFlow is imported only when the command runs, so the rest of the CLI stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bookrec.commands.common import (
    json_object,
    needs_worker_side,
    number,
    print_json,
    progress_bar,
    redis_client,
    show_progress,
    table,
)
from bookrec.shared.payloads import MODEL_KINDS, hyper_params
from bookrec.shared.settings import Settings
from bookrec.worker.learn.inputs import ReadOptions, add_book_options, add_read_options

METRICS = ("rmse", "mae", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")
BASELINES = ("global_mean", "bias", "popularity")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec train`."""
    parser = subparsers.add_parser(
        "train",
        help="train a model version and evaluate it beside the baselines",
        description="Train a model on a ratings file (or, without --ratings, on one snapshot of the ratings store "
        "at BOOKREC_DATABASE_URL), evaluate it on a held-out split (or --test file) beside the global_mean, bias and "
        "popularity baselines, and save it as a new version in BOOKREC_MODEL_STORE. "
        "With no --model, trains the default ranking model (mult-dae).",
    )
    parser.add_argument(
        "--ratings",
        type=Path,
        metavar="FILE",
        help="ratings CSV/TSV (user, item, rating columns); default: the ratings store (BOOKREC_DATABASE_URL)",
    )
    parser.add_argument(
        "--books",
        type=Path,
        metavar="FILE",
        help="books file for titles (and authors, years, covers): goodbooks' books.csv, MovieLens' movies.csv, any CSV "
        "with an item id and a title column (see 'reading the books file')",
    )
    parser.add_argument(
        "--test", type=Path, metavar="FILE", help="explicit test file (read with the same options); no split is made"
    )
    parser.add_argument("--model", choices=MODEL_KINDS, help="model kind (default: mult-dae, trained to rank)")
    parser.add_argument("--dim", type=int, metavar="D", help="embedding / hidden size (default depends on the kind)")
    parser.add_argument("--epochs", type=int, metavar="E", help="maximum epochs (early stopping may end sooner)")
    parser.add_argument(
        "--params",
        type=json_object,
        metavar="JSON",
        help="hyper-parameters of the kind as a JSON object, e.g. '{\"l2\": 200}' for ease (README: Models); "
        "--dim and --epochs win over the same keys",
    )
    parser.add_argument(
        "--split",
        choices=("per-user", "random"),
        default="per-user",
        help="how to hold out the test part (default: per-user)",
    )
    parser.add_argument(
        "--test-frac", type=float, default=0.25, metavar="X", help="fraction held out for testing (default: 0.25)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed for the split and the training (default: 0)"
    )
    parser.add_argument(
        "--promote", action="store_true", help="put the new version in production (store record, Redis pointer, event)"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --promote: promote even a version trained on another catalogue"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table; no progress output"
    )
    add_read_options(parser)
    add_book_options(parser, item_col=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, save, optionally promote, and report."""
    needs_worker_side("bookrec train")
    from bookrec.worker.serve.tf_setup import configure_tensorflow

    settings = Settings.from_env()
    given = {k: v for k, v in (("dim", args.dim), ("epochs", args.epochs)) if v is not None}
    params = hyper_params({**(args.params or {}), **given}, args.model)  # refused before TensorFlow loads
    configure_tensorflow(threads=0)
    from bookrec.model_store.store import ModelStore
    from bookrec.worker.learn.pipeline import TrainRequest, train_version
    from bookrec.worker.serve.store_ratings import read_store

    request = TrainRequest(
        ratings=args.ratings if args.ratings is not None else read_store(settings.database_url),
        books=args.books,
        test=args.test,
        kind=args.model,
        params=params,
        split=args.split,
        test_frac=args.test_frac,
        seed=args.seed,
        read_options=ReadOptions.from_args(args),
        memory_mb=settings.train_memory_mb,
    )
    store = ModelStore(settings.model_store)
    with progress_bar(None, "training", show_progress(args.json), unit="epoch") as bar:

        def on_epoch(done: int, planned: int, logs: dict[str, float]) -> None:
            bar.total = planned
            bar.update(done - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})

        result = train_version(store, request, on_epoch=on_epoch, on_stage=lambda stage: bar.set_description(stage))
    result["promoted"] = False
    if args.promote:
        from bookrec.producer.client import Client

        Client(settings=settings, connection=redis_client(settings)).promote(
            result["version"], reason="bookrec train --promote", force=args.force
        )
        result["promoted"] = True
    if args.json:
        print_json(result)
    else:
        print(_report(result))
    return 0


def _report(result: dict[str, Any]) -> str:
    """The metrics table and a one-line summary."""
    rows = [
        [name, number(result["metrics"].get(name)), *(number(result["baselines"][b].get(name)) for b in BASELINES)]
        for name in METRICS
    ]
    header = f"version {result['version']} ({result['model']}, {result['seconds']} s training)"
    if result["promoted"]:
        header += ", promoted to production"
    metrics = result["metrics"]
    footer = f"test rows {metrics['test_rows']}, users ranked {metrics['test_users']}, rows with unknown user {metrics['unknown_user_rows']}, unknown item {metrics['unknown_item_rows']}"
    return "\n".join([header, "", table(["metric", result["model"], *BASELINES], rows), "", footer])
