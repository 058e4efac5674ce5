"""`bookrec db upgrade`: migrate the ratings store (BOOKREC_DATABASE_URL) to the newest schema."""

from __future__ import annotations

import argparse
from typing import Any

from bookrec.commands.common import print_json
from bookrec.shared.errors import MissingDependency
from bookrec.shared.settings import Settings, redact_url


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec db upgrade`."""
    parser = subparsers.add_parser("db", help="the ratings store: `db upgrade` migrates its schema")
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    upgrade = sub.add_parser(
        "upgrade",
        help="create or migrate the ratings store's tables to the newest revision",
        description="Run the ratings store's Alembic migrations on BOOKREC_DATABASE_URL up to the newest revision "
        "(idempotent; `bookrec init` runs it too).",
    )
    upgrade.add_argument("--json", action="store_true", help='print {"database", "revision"} as JSON')
    upgrade.set_defaults(handler=run_upgrade)


def open_store(url: str) -> Any:
    """The RatingsStore at `url`; MissingDependency (one line, exit 2) without bookrec[store]."""
    try:
        from bookrec.ratings.store import RatingsStore
    except ModuleNotFoundError as exc:
        raise MissingDependency(
            f"the ratings store needs bookrec[store] ({exc.name} is missing): pip install 'bookrec[store]'"
        ) from None
    return RatingsStore(url)


def upgrade_store(settings: Settings) -> str:
    """Migrate the ratings store of `settings` to the newest revision; return that revision."""
    store = open_store(settings.database_url)
    try:
        return store.upgrade()
    finally:
        store.close()


def run_upgrade(args: argparse.Namespace) -> int:
    """Migrate the ratings store and say where and to which revision."""
    settings = Settings.from_env()
    revision = upgrade_store(settings)
    database = redact_url(settings.database_url)
    if args.json:
        print_json({"database": database, "revision": revision})
    else:
        print(f"ratings store {database} is at revision {revision}")
    return 0
