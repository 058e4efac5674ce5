"""`bookrec rate | unrate`: add a rating event to the ratings stream (README: Ratings stream)."""

from __future__ import annotations

import argparse

from bookrec.commands.common import print_json


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

    rate = subparsers.add_parser(
        "rate",
        parents=[event, options],
        help="add a rating to the ratings stream",
        description="XADD a rating event (user_id, book_id, rating, and ts / event_id if given) to the ratings "
        "stream, after checking it against the stream's rules (BOOKREC_RATING_MIN..BOOKREC_RATING_MAX). "
        "Prints the entry's stream id.",
    )
    rate.add_argument("rating", type=float, metavar="RATING", help="the rating, within the catalogue's scale")
    rate.set_defaults(handler=_rate)

    unrate = subparsers.add_parser(
        "unrate",
        parents=[event, options],
        help="add the removal of a rating to the ratings stream",
        description="XADD a delete event (op delete: the reader removed their rating of the book) to the ratings "
        "stream. Prints the entry's stream id.",
    )
    unrate.set_defaults(handler=_unrate)


def _client():
    from bookrec.producer.client import Client

    return Client()


def _rate(args: argparse.Namespace) -> int:
    client = _client()
    stream_id = client.rate(args.user, args.book, args.rating, ts=args.ts, event_id=args.event_id)
    return _report(client, args, stream_id, {"op": "rate", "rating": args.rating})


def _unrate(args: argparse.Namespace) -> int:
    client = _client()
    stream_id = client.unrate(args.user, args.book, ts=args.ts, event_id=args.event_id)
    return _report(client, args, stream_id, {"op": "delete"})


def _report(client, args: argparse.Namespace, stream_id: str, what: dict) -> int:
    """Print where the event went: its stream and id, as text or JSON."""
    stream = client.keys.ratings_stream
    if args.json:
        print_json({"stream": stream, "id": stream_id, "user_id": args.user, "book_id": args.book, **what})
    elif what["op"] == "delete":
        print(f"removed user {args.user}'s rating of book {args.book}: {stream} {stream_id}")
    else:
        print(f"user {args.user} rated book {args.book} {args.rating:g}: {stream} {stream_id}")
    return 0
