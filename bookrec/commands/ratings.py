"""`bookrec rate | unrate`: add a rating event to the ratings stream (README: Ratings stream); with `--wait`, print
the reader's list once it includes the event (README: Fresh lists)."""

from __future__ import annotations

import argparse

from bookrec.commands.common import describe_entry, print_json
from bookrec.commands.jobs import warn_if_unserved
from bookrec.shared.keys import QUEUE_FRESH
from bookrec.shared.payloads import count_n


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ratings commands."""
    event = argparse.ArgumentParser(add_help=False)
    event.add_argument("user", metavar="USER", help="the reader's id")
    event.add_argument("book", metavar="BOOK", help="the book's id (a book missing from the catalogue is fine)")
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--ts", metavar="TS", help="when it happened: epoch seconds or ISO-8601 UTC (default: the entry's own time)"
    )
    options.add_argument("--event-id", metavar="ID", help="your idempotency key for this event")
    options.add_argument("--json", action="store_true", help="print JSON instead of text")
    options.add_argument(
        "--wait", action="store_true", help="wait until the reader's cached list includes the event, and print it"
    )
    options.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait with --wait (default: 30)"
    )
    options.add_argument("-n", type=int, default=10, metavar="N", help="books to print with --wait (default: 10)")

    rate = subparsers.add_parser(
        "rate",
        parents=[event, options],
        help="add a rating to the ratings stream",
        description="XADD a rating event (user_id, book_id, rating, and ts / event_id if given) to the ratings "
        "stream, after checking it against the stream's rules (BOOKREC_RATING_MIN..BOOKREC_RATING_MAX). "
        "Prints the entry's stream id; with --wait, then the reader's new list once a worker recomputed it.",
    )
    rate.add_argument("rating", type=float, metavar="RATING", help="the rating, within the catalogue's scale")
    rate.set_defaults(handler=_rate)

    unrate = subparsers.add_parser(
        "unrate",
        parents=[event, options],
        help="add the removal of a rating to the ratings stream",
        description="XADD a delete event (op delete: the reader removed their rating of the book) to the ratings "
        "stream. Prints the entry's stream id; with --wait, then the reader's new list.",
    )
    unrate.set_defaults(handler=_unrate)


def _client():
    from bookrec.producer.client import Client

    return Client()


def _rate(args: argparse.Namespace) -> int:
    count_n(args.n)  # a bad -n is refused before anything is sent
    client = _client()
    stream_id = client.rate(args.user, args.book, args.rating, ts=args.ts, event_id=args.event_id)
    return _report(client, args, stream_id, {"op": "rate", "rating": args.rating})


def _unrate(args: argparse.Namespace) -> int:
    count_n(args.n)
    client = _client()
    stream_id = client.unrate(args.user, args.book, ts=args.ts, event_id=args.event_id)
    return _report(client, args, stream_id, {"op": "delete"})


def _report(client, args: argparse.Namespace, stream_id: str, what: dict) -> int:
    """Print where the event went: its stream and id, as text or JSON; with --wait, then the reader's new list."""
    stream = client.keys.ratings_stream
    entry = None
    if args.wait:
        warn_if_unserved(client, QUEUE_FRESH)
        entry = client.wait_rated(args.user, stream_id, timeout=args.timeout)
        entry = {**entry, "items": entry["items"][: args.n]}
    if args.json:
        waited = {"list": entry} if args.wait else {}
        print_json({"stream": stream, "id": stream_id, "user_id": args.user, "book_id": args.book, **what, **waited})
        return 0
    if what["op"] == "delete":
        print(f"removed user {args.user}'s rating of book {args.book}: {stream} {stream_id}")
    else:
        print(f"user {args.user} rated book {args.book} {args.rating:g}: {stream} {stream_id}")
    if entry is not None:
        print(describe_entry(entry))
    return 0
