"""`bookrec models`: list, inspect, promote, roll back and delete model versions in the store.

The store is `BOOKREC_MODEL_STORE`; promote and rollback also move the Redis pointer and
announce the change on the events channel (`BOOKREC_REDIS_URL`, `BOOKREC_KEY_PREFIX`).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from redis import Redis

from bookrec.commands.common import needs_worker_side, number, print_json, table
from bookrec.model_store.store import ModelStore
from bookrec.producer.client import Client
from bookrec.shared.redis_conn import connect
from bookrec.shared.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `models` command group and its actions to the `bookrec` parser."""
    parser = subparsers.add_parser(
        "models",
        help="list, inspect, promote, roll back and delete model versions",
        description="Manage the versioned model store (BOOKREC_MODEL_STORE) and which version is in production.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")

    listing = actions.add_parser(
        "list",
        parents=[json_flag],
        help="list versions, oldest first; * marks production",
        description="List every version in the store, oldest first, with kind, creation time, the data it was "
        "trained on (ratings file, or `store`; rows, users, items), its gate metric and its state: production, "
        "promoted or rejected. `*` marks the version in production; damaged versions are listed as corrupt with the reason.",
    )
    listing.set_defaults(handler=_list)

    show = actions.add_parser(
        "show",
        parents=[json_flag],
        help="show one version's metadata and metrics against the baselines",
        description="Show a version's kind, creation time, parent, hyper-parameters, decision, the ratings store "
        "snapshot it was trained on (rows, users, items, newest updated_at, last stream id), data fingerprint "
        "and its metrics beside the baselines'. --json prints the whole metadata.json plus `decision`.",
    )
    show.add_argument("version", metavar="VERSION", help="version id, as printed by `bookrec models list`")
    show.add_argument("--plot", metavar="FILE.png", type=Path, help="also draw learning curves and metrics into FILE")
    show.set_defaults(handler=_show)

    promote_cmd = actions.add_parser(
        "promote",
        parents=[json_flag],
        help="put a version in production",
        description="Verify a version's files, record it as in production, point Redis at it and tell the workers, "
        "which load it beside the old one and swap. A version trained on another catalogue than production's "
        "(sharing fewer than half of the items either holds) is refused unless --force. If Redis is down the "
        "store record is still updated and the command exits non-zero.",
    )
    promote_cmd.add_argument("version", metavar="VERSION", help="version id, as printed by `bookrec models list`")
    promote_cmd.add_argument("--reason", default="manual", help="why, recorded in the event (default: manual)")
    promote_cmd.add_argument(
        "--force", action="store_true", help="promote even if it was trained on another catalogue than production"
    )
    promote_cmd.set_defaults(handler=_promote)

    rollback_cmd = actions.add_parser(
        "rollback",
        parents=[json_flag],
        help="put the previous production version back",
        description="Put back the version that was in production before the current one. The current one leaves "
        "production's history, so each rollback goes one step further back; after a promotion, rollback returns "
        "to the version it replaced.",
    )
    rollback_cmd.set_defaults(handler=_rollback)

    delete = actions.add_parser(
        "delete",
        parents=[json_flag],
        help="delete a version (never the production one)",
        description="Delete a version's directory from the store. The production version is refused: "
        "promote another one or roll back first.",
    )
    delete.add_argument("version", metavar="VERSION", help="version id, as printed by `bookrec models list`")
    delete.set_defaults(handler=_delete)


def _connect(settings: Settings) -> Redis:
    """A Redis client for `settings.redis_url` (connects lazily, on the first command)."""
    return connect(settings)


def _list(args: argparse.Namespace) -> int:
    store = ModelStore(Settings.from_env().model_store)
    versions = store.list()
    if args.json:
        print_json(versions)
    elif not versions:
        print(f"no model versions in {store.root}; train one first (see `bookrec --help`)")
    else:
        print(_list_table(versions))
    return 0


def _show(args: argparse.Namespace) -> int:
    store = ModelStore(Settings.from_env().model_store)
    metadata = store.metadata(args.version)
    if args.plot is not None:
        needs_worker_side("bookrec models show --plot", ("matplotlib",))
        from bookrec.plot import plot_version

        plot_version(metadata, args.plot)
    decision = store.decision(args.version)
    if args.json:
        print_json({**metadata, "decision": decision})
        return 0
    print(_describe(metadata, decision, in_production=store.production() == args.version))
    if args.plot is not None:
        print(f"\nplot written to {args.plot}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    event = Client(settings=settings, connection=_connect(settings)).promote(args.version, args.reason, args.force)
    _report_event(event, args.json, "promoted")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    event = Client(settings=settings, connection=_connect(settings)).rollback()
    _report_event(event, args.json, "rolled back to")
    return 0


def _delete(args: argparse.Namespace) -> int:
    ModelStore(Settings.from_env().model_store).delete(args.version)
    if args.json:
        print_json({"deleted": args.version})
    else:
        print(f"deleted {args.version}")
    return 0


def _report_event(event: dict, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(event)
    else:
        print(f"{verb} {event['version']} (previously {event['previous'] or 'none'}); workers are switching to it")


def _list_table(versions: list[dict]) -> str:
    rows = []
    for v in versions:
        marker = "*" if v["production"] else " "
        if v["status"] == "corrupt":
            rows.append([f"{marker} {v['version']}", "CORRUPT", *["-"] * 7])
            continue
        created = (v.get("created_at") or "-")[:19].replace("T", " ")
        rows.append(
            [f"{marker} {v['version']}", v.get("kind") or "-", created, *_data_cells(v), _gate_cell(v), _state(v)]
        )
    notes = [v["reason"] for v in versions if v["status"] == "corrupt"]
    headers = ["  VERSION", "KIND", "CREATED (UTC)", "DATA", "ROWS", "USERS", "ITEMS", "GATE METRIC", "STATE"]
    return "\n".join([table(headers, rows), "* = in production", *notes])


def _data_cells(summary: dict) -> list[str]:
    """The DATA, ROWS, USERS and ITEMS cells of a version's row: its ratings file's name (`store` for a ratings store
    snapshot, whose source is a URL: a recorded path never holds `://`) and counts."""
    data = summary.get("data") or {}
    source = data.get("source")
    name = "-" if not source else "store" if "://" in source else Path(source).name
    return [name, *(_count(data.get(k)) for k in ("rows", "users", "items"))]


def _gate_cell(summary: dict) -> str:
    """`metric value` of the metric the retrain gate compares for this version, or '-'."""
    metric = summary.get("gate_metric")
    if not metric:
        return "-"
    return f"{metric} {number((summary.get('metrics') or {}).get(metric))}"


def _state(summary: dict) -> str:
    """production, promoted (in production before), rejected (by a retrain) or '-' (never decided)."""
    return "production" if summary["production"] else summary.get("decision") or "-"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _describe(metadata: dict, decision: dict | None, in_production: bool) -> str:
    fields = [
        ("version", f"{metadata.get('version')}{'  (in production)' if in_production else ''}"),
        ("kind", metadata.get("kind")),
        ("created_at", metadata.get("created_at")),
        ("parent", metadata.get("parent")),
        ("params", metadata.get("params")),
        ("decision", f"{decision['decision']} ({decision.get('reason')})" if decision else None),
        ("snapshot", _snapshot(metadata.get("snapshot"))),
        ("files", len(metadata.get("files") or {})),
    ]
    lines = [f"{name:<11} {_inline(value)}" for name, value in fields]
    return "\n".join([*lines, "", _data_table(metadata.get("data_fingerprint")), "", _metrics_table(metadata)])


COUNTS = ("rows", "users", "items", "bytes")
"""The counted columns of the data table."""


def _data_table(fingerprint: Any) -> str:
    """The data fingerprint as a table: one row per file (ratings, test, books), then the split's sizes."""
    if not isinstance(fingerprint, dict):
        return f"data        {_inline(fingerprint)}"
    files = [(name, fingerprint.get(name)) for name in ("ratings", "test", "books")]
    rows = [
        [name, str(f.get("path") or f.get("store") or "-"), *(_count(f.get(k)) for k in COUNTS), _digest(f)]
        for name, f in files
        if isinstance(f, dict)
    ]
    split = (
        f"split: {_count(fingerprint.get('train_rows'))} train rows, {_count(fingerprint.get('test_rows'))} test rows"
    )
    return "\n".join([table(["DATA", "PATH", "ROWS", "USERS", "ITEMS", "BYTES", "SHA256"], rows), split])


def _snapshot(snapshot: Any) -> str | None:
    """The ratings store snapshot a version was trained on, in one line (None for a file-trained version)."""
    if not isinstance(snapshot, dict):
        return None
    newest = snapshot.get("newest_updated_at")
    when = _utc(newest) if isinstance(newest, (int, float)) else "-"
    counts = ", ".join(f"{_count(snapshot.get(k))} {k}" for k in ("rows", "users", "items"))
    return (
        f"{snapshot.get('source')} {snapshot.get('url')}: {counts}; newest updated_at {when}; "
        f"last stream id {snapshot.get('last_stream_id') or '-'}"
    )


def _utc(epoch: float) -> str:
    """Epoch seconds as `YYYY-MM-DD HH:MM:SS UTC`."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _digest(file: dict) -> str:
    """The first 12 hex digits of a file's sha256, enough to tell two files apart at a glance."""
    return str(file["sha256"])[:12] if file.get("sha256") else "-"


def _metrics_table(metadata: dict) -> str:
    candidates = {"model": metadata.get("metrics"), **(metadata.get("baselines") or {})}
    sources = {label: values for label, values in candidates.items() if isinstance(values, dict)}
    names = list(dict.fromkeys(name for values in sources.values() for name in values))
    if not names:
        return "no metrics recorded"
    rows = [[name, *(number(values.get(name)) for values in sources.values())] for name in names]
    return table(["METRIC", *(label.upper() for label in sources)], rows)


def _inline(value: Any) -> str:
    if value is None or value == {}:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
