"""`bookrec recommend | get | retrain | refresh | status`: talk to the running service through Redis."""

from __future__ import annotations

import argparse
import time

from bookrec.commands.common import describe_entry, json_object, print_json, progress_bar, show_progress, table
from bookrec.commands.jobs import follow_retrain, register_retrain_actions, warn_if_unserved
from bookrec.shared.errors import NotCached
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, QUEUE_RETRAIN
from bookrec.shared.payloads import MODEL_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the service commands."""
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON instead of text")

    rec = subparsers.add_parser(
        "recommend",
        parents=[json_flag],
        help="request top-N lists for users",
        description="Enqueue recommend jobs (1,000 users per job) for the given users. With --wait, "
        "wait until they are computed and print each user's list from the cache.",
    )
    rec.add_argument("users", nargs="+", metavar="USER", help="user ids as in the ratings file")
    rec.add_argument("-n", type=int, default=10, metavar="N", help="books per list, 1 to 100 (default: 10)")
    rec.add_argument("--wait", action="store_true", help="wait for the lists and print them")
    rec.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="seconds to wait with --wait (default: 120)"
    )
    rec.set_defaults(handler=_recommend)

    get = subparsers.add_parser(
        "get",
        parents=[json_flag],
        help="print a user's cached list",
        description="Read bookrec:recs:{USER} from Redis (what any service can GET) and print it. "
        "Exits 8 when the user has no cached list.",
    )
    get.add_argument("user", metavar="USER")
    get.set_defaults(handler=_get)

    retrain = subparsers.add_parser(
        "retrain",
        parents=[json_flag],
        help="train a new model version on the trainer and promote it if it passes the gate",
        description="Enqueue a retrain on the `retrain` queue (served by `bookrec worker --queues retrain`). "
        "Trains on one snapshot of the ratings store (the trainer's BOOKREC_DATABASE_URL), or on --ratings FILE, "
        "with books.csv from BOOKREC_DATA_DIR; evaluates candidate and production on ratings "
        "neither trained on, and promotes the candidate only if it is no worse (ndcg@10 for ranking kinds, rmse "
        "for rating kinds, ndcg@10 when the kinds' tasks differ). With the ratings production was trained "
        "on (the same rows in the store, or the same file), nothing is trained unless --force. "
        "`bookrec retrain status` and `bookrec retrain cancel` show and cancel a retrain.",
    )
    retrain.add_argument("--model", choices=MODEL_KINDS, help="model kind (default: mult-dae)")
    retrain.add_argument(
        "--params",
        type=json_object,
        metavar="JSON",
        help="hyper-parameters as a JSON object, e.g. '{\"dim\": 128}' (the README lists each kind's)",
    )
    retrain.add_argument(
        "--ratings",
        metavar="FILE",
        help="train on this ratings file inside BOOKREC_DATA_DIR instead of the ratings store (e.g. ratings.csv)",
    )
    retrain.add_argument("--force", action="store_true", help="skip the gate and promote the candidate")
    retrain.add_argument("--wait", action="store_true", help="wait for the result, with a progress bar")
    retrain.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="seconds to wait with --wait (default: no limit)"
    )
    retrain.set_defaults(handler=_retrain)
    register_retrain_actions(retrain)

    refresh = subparsers.add_parser(
        "refresh",
        parents=[json_flag],
        help="recompute every user's cached list",
        description="Enqueue a refresh: the users of the production model are split into chunks that "
        "every worker replica shares on the `refresh` queue.",
    )
    refresh.add_argument("-n", type=int, default=10, metavar="N", help="books per list (default: 10)")
    refresh.add_argument("--wait", action="store_true", help="wait until every chunk is done, with a progress bar")
    refresh.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="seconds to wait with --wait (default: no limit)"
    )
    refresh.set_defaults(handler=_refresh)

    status = subparsers.add_parser(
        "status",
        parents=[json_flag],
        help="queues, workers, production version, cache size",
        description="Show queue lengths, failed jobs, live workers with the model version each has "
        "loaded (a worker whose heartbeat is late is `unresponsive`; one silent for a minute is left out), "
        "whether Redis accepts writes, the production version, the number of cached lists and any running retrain.",
    )
    status.set_defaults(handler=_status)


def _client():
    from bookrec.producer.client import Client

    return Client()


def _recommend(args: argparse.Namespace) -> int:
    client = _client()
    if not args.wait:
        jobs = client.recommend(args.users, n=args.n)
        if args.json:
            print_json({"jobs": [job.id for job in jobs]})
        else:
            print(
                f"enqueued {len(jobs)} recommend job(s) for {len(args.users)} user(s): {', '.join(job.id for job in jobs)}"
            )
        return 0
    warn_if_unserved(client, QUEUE_RECOMMEND)
    entries = client.recommend(args.users, n=args.n, wait=True, timeout=args.timeout)
    if args.json:
        print_json(entries)
    else:
        print("\n\n".join(describe_entry(entry) for entry in entries if entry is not None))
    return 0


def _get(args: argparse.Namespace) -> int:
    cached = _client().get(args.user)
    if cached is None:
        raise NotCached(f"no cached list for user {args.user}; request one with `bookrec recommend {args.user}`")
    if args.json:
        print_json({**cached.entry, "is_current": cached.is_current})
    else:
        print(
            describe_entry(cached.entry)
            + ("" if cached.is_current else "\n(computed by an older model; a refresh will replace it)")
        )
    return 0


def _retrain(args: argparse.Namespace) -> int:
    client = _client()
    job = client.retrain(model=args.model, force=args.force, params=args.params, ratings=args.ratings)
    if not args.wait:
        print_json({"job": job.id}) if args.json else print(
            f"retrain enqueued as job {job.id}; follow it with `bookrec status`"
        )
        return 0
    warn_if_unserved(client, QUEUE_RETRAIN)
    with progress_bar(None, "retrain", show_progress(args.json), unit="epoch") as bar:
        follow_retrain(client, job.id, bar, args.timeout)
    result = client.wait([job])[0]
    if args.json:
        print_json(result)
    else:
        decision = result["decision"]
        candidate = f"candidate {result['version']} ({result['model']})" if result["version"] else "no candidate"
        print(f"{candidate}: {decision['reason']}")
        print(
            "promoted to production"
            if result["promoted"]
            else f"not promoted; production stays {result['production']['version']}"
        )
    return 0


def _refresh(args: argparse.Namespace) -> int:
    client = _client()
    job = client.refresh(n=args.n)
    if not args.wait:
        print_json({"job": job.id}) if args.json else print(f"refresh enqueued as job {job.id}")
        return 0
    warn_if_unserved(client, QUEUE_REFRESH)
    summary = client.wait([job], timeout=args.timeout)[0]
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with progress_bar(summary["users"], "refresh", show_progress(args.json), unit="user") as bar:
        while True:
            done, total = client.refresh_counts(summary["refresh_id"], summary["users"], seen=bar.n)
            bar.update(done - bar.n)
            if done >= total:
                break
            if deadline is not None and time.monotonic() > deadline:
                from bookrec.shared.errors import Timeout

                raise Timeout(
                    f"refresh {summary['refresh_id']} at {done}/{total} users after {args.timeout} s; it goes on"
                )
            time.sleep(0.2)
    print_json(summary) if args.json else print(
        f"refreshed {summary['users']} users in {summary['chunks']} chunks with model {summary['model_version']}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from bookrec.scheduler.status import service_status

    status = service_status(_client())
    if args.json:
        print_json(status)
        return 0
    print(
        f"redis: {status['redis']} (writes {status['redis_writes']})\nproduction model: {status['production_version'] or '(none)'}"
    )
    print(
        f"cached lists: {status['cache_entries']}   failed jobs: {status['failed_jobs']}   retrain: {_retrain_cell(status['retrain'])}"
    )
    print(f"readers waiting for a fresh recompute: {status['fresh_pending']}")
    print(f"next scheduled retrain: {_schedule_cell(status['scheduler'])}")
    print(f"ratings since production snapshot: {_backlog_cell(status['ratings_since_production'])}\n")
    print(
        table(
            ["queue", "queued", "failed", "workers"],
            [[q, str(v["queued"]), str(v["failed"]), str(v["workers"])] for q, v in status["queues"].items()],
        )
    )
    for warning in status["warnings"]:
        print(f"warning: {warning}")
    print()
    rows = [
        [w["name"], w["state"], ",".join(w["queues"]), _model_cell(w), w["current_job"] or "-"]
        for w in status["workers"]
    ]
    print(table(["worker", "state", "queues", "model", "job"], rows) if rows else "no live workers")
    return 0


def _schedule_cell(schedule: dict | None) -> str:
    """When the next scheduled retrain is due: the cron entry's next time and/or the after-ratings threshold."""
    if schedule is None:
        return "none (no scheduler running)"
    parts = []
    if schedule["cron"]:
        parts.append(f"{schedule['next_retrain']} (cron '{schedule['cron']}')")
    if schedule["after_ratings"]:
        parts.append(
            f"once {schedule['after_ratings']:,} ratings arrived since production's snapshot "
            f"(checked every {schedule['check_every_s']} s, next at {schedule['next_ratings_check'] or 'start'})"
        )
    return "; or ".join(parts)


def _backlog_cell(backlog: dict) -> str:
    """How many ratings production has not trained on, and since when; or why that is unknown."""
    count, since = backlog["count"], backlog["since"]
    if count is None:
        return f"unknown: {backlog['error']}"
    if backlog["basis"] == "snapshot":
        return (
            f"{count:,} (written after its snapshot of {since})"
            if since
            else f"{count:,} (it trained on an empty store)"
        )
    if backlog["basis"] == "created_at":
        return f"{count:,} (written after it was made, {since}: it trained on a file)"
    return f"{count:,} (no production model: every rating counts)"


def _model_cell(worker: dict) -> str:
    """The worker's model version, and the one it is about to swap to (waiting for a swap slot or its next job)."""
    served = worker["model_version"] or "-"
    cell = f"{served} -> {worker['pending_version']}" if worker.get("pending_version") else served
    return f"{cell} (not loaded yet: see the warning)" if worker.get("load_error") else cell


def _retrain_cell(retrain: dict | None) -> str:
    """The retrain holding the lock: its state (queued, running, cancelling) and job id; 'no' without one."""
    return f"{retrain['state'] or 'unknown'} (job {retrain['job']})" if retrain else "no"
