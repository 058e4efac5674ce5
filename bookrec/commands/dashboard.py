"""`bookrec dashboard`: serve the operator's web dashboard (README: Dashboard)."""

from __future__ import annotations

import argparse
import socket

from bookrec.commands.common import needs_extra
from bookrec.shared.errors import ConfigError
from bookrec.shared.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
"""Where the dashboard listens by default: this host only (rq-dashboard, in compose, takes 9181)."""
WEB_SIDE = ("starlette", "jinja2", "uvicorn", "multipart")
"""What `bookrec[web]` brings that the dashboard imports."""

DESCRIPTION = (
    "Serve the dashboard: the overview (production version with its metrics beside the baselines and its learning "
    "curves, workers with loaded and pending versions, queues and failed jobs, the ingest's rate, lag and dead letters, "
    "the next scheduled retrain), the model versions (promote, roll back) and a reader's page (their ratings, their "
    "cached list, a recompute). Read-only unless BOOKREC_DASHBOARD_TOKEN is set; then each action needs that token. "
    "Listens on 127.0.0.1 by default: put it behind a proxy with TLS to reach it from elsewhere. Stops on SIGTERM or "
    "Ctrl-C. Needs bookrec[web]."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bookrec dashboard`."""
    parser = subparsers.add_parser("dashboard", help="serve the operator's web dashboard", description=DESCRIPTION)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    parser.set_defaults(handler=run)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65535")
    return port


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until SIGTERM or Ctrl-C."""
    needs_extra("bookrec dashboard", "web", WEB_SIDE)
    settings = Settings.from_env()  # ConfigError (exit 2) for a malformed setting, a token too short among them
    from bookrec.shared.logs import setup_logging

    setup_logging(settings.log_level)
    listener = _listen(args.host, args.port)
    import uvicorn

    from bookrec.dashboard.app import create_app

    mode = "actions need BOOKREC_DASHBOARD_TOKEN" if settings.dashboard_token else "read-only"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"bookrec dashboard on http://{host}:{args.port}/ ({mode})", flush=True)
    config = uvicorn.Config(
        create_app(settings), log_level=settings.log_level.lower(), server_header=False, proxy_headers=False
    )
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port; ConfigError (one line, exit 2) when the address cannot be taken."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener = socket.socket(family, kind)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener
