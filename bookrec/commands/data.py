"""`bookrec data`: generate synthetic ratings of real books (or the benchmarks' latent catalogue), check a ratings
file before training, and move ratings and books in and out of the ratings store in bulk."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

from bookrec.commands.common import needs_worker_side, print_json, progress_bar, show_progress
from bookrec.commands.db import open_store
from bookrec.shared.settings import Settings, redact_url
from bookrec.worker.learn.inputs import PRESETS, ReadOptions, add_book_options, add_read_options


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group (`synth`, `inspect`, `import`, `import-books`, `export`) to the `bookrec` parser."""
    parser = subparsers.add_parser(
        "data",
        help="generate synthetic ratings, check a ratings file, or import/export the ratings store",
        description="Generate synthetic ratings of real books, check that a ratings file reads "
        "correctly before training on it, or move ratings and books in and out of the ratings store in bulk.",
    )
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    _register_synth(actions, json_flag)
    _register_inspect(actions, json_flag)
    _register_bulk(actions, json_flag)


def _register_synth(actions: argparse._SubParsersAction, json_flag: argparse.ArgumentParser) -> None:
    sizes = "; ".join(
        f"{name}: {p['users']:,} users, {p['books']:,} books, {p['ratings']:,} ratings" for name, p in PRESETS.items()
    )
    synth = actions.add_parser(
        "synth",
        parents=[json_flag],
        help="write synthetic ratings of real books (ratings.csv) and their books.csv",
        description="Write ratings.csv (user_id,book_id,rating; 1-5 stars) by synthetic readers of real books, and "
        "books.csv, the catalogue's rows of the books they rate, into --out. The books are goodbooks-10k's (shipped "
        "with bookrec; goodbooks-10k, Zygmunt Zając, CC BY-SA 4.0) or --books-from's: each as popular as its real "
        "ratings_count, rated around its real average rating; each reader has a few favourite authors and series, a "
        "leaning per publication era and a language, so models have real structure to learn. --latent writes the "
        f"benchmarks' latent-factor catalogue instead. Presets: {sizes}. --users/--books/--ratings override the preset "
        "(default preset: small; over real books, --books takes the most rated). The same seed gives identical files.",
    )
    synth.add_argument(
        "--out", metavar="DIR", type=Path, required=True, help="directory to write into (created if needed)"
    )
    synth.add_argument("--preset", choices=sorted(PRESETS), help="dataset size to start from (default: small)")
    synth.add_argument("--users", metavar="U", type=_count, help="number of users (ids 1..U)")
    synth.add_argument(
        "--books",
        metavar="B",
        type=_count,
        help="number of books: the B most rated of the catalogue (--latent: ids 1..B)",
    )
    synth.add_argument("--ratings", metavar="R", type=_count, help="exact number of ratings, between U and U x B")
    synth.add_argument("--seed", metavar="S", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument(
        "--books-from",
        metavar="PATH",
        type=Path,
        help="the books file whose books the readers rate (default: goodbooks-10k's books.csv, shipped with bookrec); "
        "with --latent, a goodbooks books.csv whose titles, authors, years and covers the synthetic books take",
    )
    synth.add_argument(
        "--latent",
        action="store_true",
        help="the benchmarks' catalogue instead: latent tastes, power-law popularity over book ids 1..B, titles "
        "'Synthetic Book N' (or --books-from's, in file order)",
    )
    synth.set_defaults(handler=_synth)


def _register_inspect(actions: argparse._SubParsersAction, json_flag: argparse.ArgumentParser) -> None:
    inspect = actions.add_parser(
        "inspect",
        parents=[json_flag],
        help="read a ratings file and summarise it",
        description="Read a ratings file the way training does and print its rows, users, items, rating "
        "range and mean, duplicates dropped and which columns were used. Use it to check a file (and the "
        "read options it needs) before training.",
    )
    inspect.add_argument("file", metavar="FILE", type=Path, help="ratings file (CSV or TSV)")
    add_read_options(inspect)
    inspect.set_defaults(handler=_inspect)


def _register_bulk(actions: argparse._SubParsersAction, json_flag: argparse.ArgumentParser) -> None:
    store = argparse.ArgumentParser(add_help=False, parents=[json_flag])
    store.add_argument(
        "--database", metavar="URL", help="the ratings store's database URL (default: BOOKREC_DATABASE_URL)"
    )
    ratings = actions.add_parser(
        "import",
        parents=[store],
        help="merge a ratings file into the ratings store",
        description="Read a ratings file the way training does (same read options, same errors) and merge it "
        "into the ratings store in one transaction (COPY on PostgreSQL, batches on SQLite), migrating the schema "
        "first. For each (user, book) the latest ts wins, as for streamed events; the file's rows get the time of "
        "the import as their ts. JSON: {database, path, rows, users, items, seconds}.",
    )
    ratings.add_argument("file", metavar="FILE", type=Path, help="ratings file (CSV or TSV)")
    add_read_options(ratings)
    ratings.set_defaults(handler=_import_ratings)
    books = actions.add_parser(
        "import-books",
        parents=[store],
        help="insert or replace the catalogue from a books file (goodbooks' books.csv, MovieLens' movies.csv, ...)",
        description="Read a books file the way training does (columns by name, the same errors) and insert or "
        "replace its rows in the ratings store's catalogue in one transaction, migrating the schema first: the item "
        "id becomes book_id, the title title, authors and year authors and original_publication_year; goodbooks' "
        "other columns are kept, others ignored. JSON: {database, path, rows, seconds}.",
    )
    books.add_argument("file", metavar="FILE", type=Path, help="books file (CSV or TSV) with an id and a title column")
    add_book_options(books, item_col=True)
    books.set_defaults(handler=_import_books)
    export = actions.add_parser(
        "export",
        parents=[store],
        help="write the ratings store's live ratings to a CSV file",
        description="Write one consistent snapshot of the live ratings to FILE as CSV (user_id,book_id,rating, "
        "sorted by user then book), atomically: FILE appears whole or not at all. "
        "JSON: {database, path, rows, users, items, seconds}.",
    )
    export.add_argument("file", metavar="FILE", type=Path, help="the CSV file to write (replaced if it exists)")
    export.set_defaults(handler=_export)


def _count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _synth(args: argparse.Namespace) -> int:
    needs_worker_side("bookrec data synth")
    from bookrec.worker.learn.synth import synthesise, synthesise_readers

    sizes = {**PRESETS[args.preset or "small"]}
    sizes.update({name: getattr(args, name) for name in sizes if getattr(args, name) is not None})
    with progress_bar(sizes["users"], "synthesising", show_progress(args.json), unit="user") as bar:
        progress = lambda done, _total: bar.update(done - bar.n)  # noqa: E731
        if args.latent:
            summary = synthesise(args.out, seed=args.seed, books_from=args.books_from, progress=progress, **sizes)
        else:
            catalogue = {"catalogue": args.books_from} if args.books_from is not None else {}
            summary = synthesise_readers(args.out, seed=args.seed, progress=progress, **sizes, **catalogue)
    if args.json:
        print_json(summary)
    else:
        print(
            f"wrote {summary['ratings']:,} ratings by {summary['users']:,} users of {summary['books']:,} books "
            f"(seed {summary['seed']}) to {summary['ratings_path']} and {summary['books_path']}"
        )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    needs_worker_side("bookrec data inspect")
    from bookrec.worker.learn.datasets import read_ratings

    data = read_ratings(args.file, ReadOptions.from_args(args))
    frame = data.frame
    summary: dict[str, Any] = {
        "path": str(data.path),
        "rows": len(frame),
        "users": int(frame["user"].nunique()),
        "items": int(frame["item"].nunique()),
        "rating_min": float(frame["rating"].min()),
        "rating_max": float(frame["rating"].max()),
        "rating_mean": round(float(frame["rating"].mean()), 4),
        "duplicates_dropped": data.duplicates_dropped,
        "columns": data.columns,
    }
    if args.json:
        print_json(summary)
    else:
        print(_describe(summary))
    return 0


def _database(args: argparse.Namespace) -> str:
    return args.database or Settings.from_env().database_url


def _import_ratings(args: argparse.Namespace) -> int:
    needs_worker_side("bookrec data import", ("numpy", "pandas"))
    summary = import_ratings_file(_database(args), args.file, ReadOptions.from_args(args), show_progress(args.json))
    _report(args, summary, imported_ratings(summary))
    return 0


def _import_books(args: argparse.Namespace) -> int:
    needs_worker_side("bookrec data import-books", ("numpy", "pandas"))
    summary = import_books_file(_database(args), args.file, show_progress(args.json), ReadOptions.from_args(args))
    _report(args, summary, imported_books(summary))
    return 0


def import_ratings_file(url: str, path: Path, options: ReadOptions, show: bool) -> dict[str, Any]:
    """Read a ratings file as `train` does and merge it into the ratings store at `url` (migrated first), with a
    progress bar when `show`; return {"database" (redacted), "path", "rows", "users", "items", "seconds"}
    (`seconds` includes reading the file)."""
    from bookrec.worker.learn.datasets import read_ratings

    started = time.monotonic()
    frame = read_ratings(path, options).frame
    result = _into_store(url, show, len(frame), "rating", lambda store, progress: store.import_ratings(frame, progress))
    seconds = round(time.monotonic() - started, 3)
    return {"database": redact_url(url), "path": str(path), **result.as_dict(), "seconds": seconds}


def import_books_file(url: str, path: Path, show: bool, options: ReadOptions = ReadOptions()) -> dict[str, Any]:
    """Read a books file as `train` does (with `options`' item and title columns) and insert or replace its rows in
    the ratings store's catalogue at `url` (migrated first), with a progress bar when `show`; return {"database"
    (redacted), "path", "rows", "seconds"}."""
    from bookrec.worker.learn.datasets import read_book_rows

    started = time.monotonic()
    rows = read_book_rows(path, options)
    count = _into_store(url, show, len(rows), "book", lambda store, progress: store.import_books(rows, progress))
    seconds = round(time.monotonic() - started, 3)
    return {"database": redact_url(url), "path": str(path), "rows": count, "seconds": seconds}


def imported_ratings(summary: dict[str, Any]) -> str:
    """`imported N ratings by U users of I books from FILE into URL in S s`, for `import_ratings_file`'s summary."""
    counts = f"{summary['rows']:,} ratings by {summary['users']:,} users of {summary['items']:,} books"
    return f"imported {counts} from {summary['path']} into {summary['database']} in {summary['seconds']:.1f} s"


def imported_books(summary: dict[str, Any]) -> str:
    """`imported N books from FILE into URL in S s`, for `import_books_file`'s summary."""
    where = f"from {summary['path']} into {summary['database']} in {summary['seconds']:.1f} s"
    return f"imported {summary['rows']:,} books {where}"


def _into_store(url: str, show: bool, total: int, unit: str, load: Callable[[Any, Any], Any]) -> Any:
    """Migrate the store at `url`, then return `load(store, progress)`, its progress drawn as a bar of `unit`s."""
    store = open_store(url)
    try:
        store.upgrade()
        with progress_bar(total, f"importing {unit}s", show, unit=unit) as bar:
            return load(store, lambda done, _total: bar.update(done - bar.n))
    finally:
        store.close()


def _export(args: argparse.Namespace) -> int:
    url = _database(args)
    store = open_store(url)
    try:
        result = store.export_csv(args.file)
    finally:
        store.close()
    summary = {"database": redact_url(url), "path": str(args.file), **result.as_dict()}
    counts = f"{result.rows:,} ratings by {result.users:,} users of {result.items:,} books"
    _report(
        args, summary, f"exported {counts} from {summary['database']} to {summary['path']} in {result.seconds:.1f} s"
    )
    return 0


def _report(args: argparse.Namespace, summary: dict[str, Any], line: str) -> None:
    """Print a bulk command's summary: JSON, or its one `line`."""
    if args.json:
        print_json(summary)
    else:
        print(line)


def _describe(summary: dict[str, Any]) -> str:
    columns = ", ".join(f"{role}={column}" for role, column in summary["columns"].items())
    lines = [
        ("file", summary["path"]),
        ("rows", f"{summary['rows']:,}"),
        ("users", f"{summary['users']:,}"),
        ("items", f"{summary['items']:,}"),
        ("ratings", f"{summary['rating_min']:g} to {summary['rating_max']:g}, mean {summary['rating_mean']:.3f}"),
        ("duplicates dropped", f"{summary['duplicates_dropped']:,} (the last rating of each pair is kept)"),
        ("columns", columns),
    ]
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)
