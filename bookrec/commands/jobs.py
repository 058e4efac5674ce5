"""Following jobs from the CLI: `bookrec retrain status | cancel`, the retrain progress bar, and the warning
every `--wait` gives when no worker listens on the job's queue."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bookrec.commands.common import number, print_json, progress_bar, show_progress
from bookrec.shared.errors import RetrainCancelled, Timeout
from bookrec.shared.keys import QUEUE_RETRAIN
from bookrec.shared.locks import CANCELLED, FAILED, FINISHED, QUEUED

ENDED = (FINISHED, FAILED, CANCELLED, None)
"""Retrain states after which nothing changes any more (None: the job is gone from Redis)."""
FOLLOW_POLL_S = 0.5
"""Seconds between two looks at a followed retrain's progress."""


def register_retrain_actions(retrain: argparse.ArgumentParser) -> None:
    """Add `status` and `cancel` under `bookrec retrain` (without an action, `bookrec retrain` enqueues one)."""
    actions = retrain.add_subparsers(dest="action", metavar="ACTION", required=False)
    # SUPPRESS: `bookrec retrain --json status` keeps the --json given before the action.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("job", nargs="?", metavar="JOB", help="retrain job id (default: the running or latest retrain)")

    status = actions.add_parser(
        "status",
        parents=[json_flag, job],
        help="a retrain's state, stage, epoch, loss, ETA and, once done, the gate's decision",
        description="Show a retrain's state (queued, running, cancelling, finished, failed, cancelled), stage, "
        "epoch, loss and ETA; once it finished, the candidate, the gate's decision and both metrics.",
    )
    status.add_argument("--follow", action="store_true", help="follow it with a progress bar until it ends")
    status.set_defaults(handler=_status)

    cancel = actions.add_parser(
        "cancel",
        parents=[json_flag, job],
        help="cancel a queued or running retrain",
        description="Cancel a retrain (default: the one holding the retrain lock). A queued one is taken off the "
        "queue and its lock released at once; a running one stops at its trainer's next epoch or step, leaves "
        "production unchanged and releases the lock.",
    )
    cancel.set_defaults(handler=_cancel)


def warn_if_unserved(client: Any, queue: str) -> None:
    """Say on stderr, at once, when no live worker listens on `queue` (the job would wait there for good)."""
    from bookrec.producer.client import no_listener_warning

    if not client.listeners(queue):
        print(f"bookrec: warning: {no_listener_warning(queue)}", file=sys.stderr)


def follow_retrain(client: Any, job_id: str, bar: Any, timeout: float | None) -> dict[str, Any]:
    """Move `bar` with a retrain's epochs until it ends; its last `Client.retrain_status`.

    RetrainCancelled if it was cancelled, Timeout after `timeout` seconds (the retrain goes on).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = client.retrain_status(job_id)
        _move(bar, status)
        if status["state"] == CANCELLED:
            raise RetrainCancelled(status["error"] or f"retrain {job_id} was cancelled before it started")
        if status["state"] in ENDED:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout(
                f"retrain job {job_id} still {status['state']} after {timeout} s; it goes on in the background"
            )
        time.sleep(FOLLOW_POLL_S)


def _move(bar: Any, status: dict[str, Any]) -> None:
    if status["epochs"]:
        bar.total = status["epochs"]
        bar.update(status["epoch"] - bar.n)
    bar.set_description(f"retrain: {status['stage'] or status['state']}")
    if status["loss"] is not None:
        bar.set_postfix(loss=f"{status['loss']:.4f}", eta_s=status["eta_s"])


def _client():
    from bookrec.producer.client import Client

    return Client()


def _status(args: argparse.Namespace) -> int:
    client = _client()
    status = client.retrain_status(args.job)
    if status["state"] == QUEUED:
        warn_if_unserved(client, QUEUE_RETRAIN)
    if args.follow and status["state"] not in ENDED:
        with progress_bar(None, "retrain", show_progress(args.json), unit="epoch") as bar:
            try:
                follow_retrain(client, status["job"], bar, None)
            except RetrainCancelled:
                pass  # the status printed below says so
        status = client.retrain_status(status["job"])
    if args.json:
        print_json(status)
    else:
        print(describe(status))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    outcome = _client().cancel_retrain(args.job)
    if args.json:
        print_json(outcome)
    elif outcome["state"] == CANCELLED:
        print(f"retrain {outcome['job']} cancelled (it was {outcome['was']}); the retrain lock is free")
    else:
        print(
            f"retrain {outcome['job']} asked to stop: it stops at its trainer's next epoch or step and releases "
            f"the lock; follow it with `bookrec retrain status {outcome['job']} --follow`"
        )
    return 0


def describe(status: dict[str, Any]) -> str:
    """A retrain's status as a few lines of text."""
    lines = [f"retrain {status['job']}: {status['state'] or 'gone from Redis'}"]
    progress = [f"stage {status['stage']}"] if status["stage"] else []
    if status["epochs"]:
        progress.append(f"epoch {status['epoch']}/{status['epochs']}")
    if status["loss"] is not None:
        progress.append(f"loss {number(status['loss'])}")
    if status["eta_s"] is not None and status["state"] not in ENDED:
        progress.append(f"ETA {status['eta_s']:.0f} s")
    if progress:
        lines.append("  " + ", ".join(progress))
    decision = status["decision"]
    if decision:
        lines.append(
            f"  {decision['metric']}: candidate {status['version']} {number(decision['candidate'])}, "
            f"production {status['production_version'] or '(none)'} {number(decision['production'])}"
        )
        lines.append(f"  gate: {decision['reason']}; {'promoted' if status['promoted'] else 'not promoted'}")
    if status["error"]:
        lines.append(f"  {status['error']}")
    return "\n".join(lines)
