"""The dashboard's web app: Starlette routes rendering Jinja2 templates on the server (no front-end build, no script
but one inline `onerror` that hides a cover image that cannot load). Pages: the overview (`/`), the versions (`/versions`,
`/versions/{version}`) and a reader (`/reader?user=ID`); actions are POST forms (`/promote`, `/rollback`,
`/recompute`) that need the token (see `actions`). Imports no TensorFlow (README: Dashboard)."""

from __future__ import annotations

import base64
import hashlib
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import jinja2
import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bookrec.dashboard import actions
from bookrec.dashboard.formatting import FILTERS
from bookrec.dashboard.overview import overview
from bookrec.dashboard.readers import reader_view
from bookrec.dashboard.sources import Sources
from bookrec.dashboard.versions import version_view
from bookrec.producer.client import Client
from bookrec.shared.errors import (
    BookrecError,
    CatalogueMismatch,
    CorruptVersion,
    ModelStoreError,
    RatingsStoreError,
    RedisUnavailable,
    ValidationError,
    VersionNotFound,
)
from bookrec.shared.redis_conn import unavailable
from bookrec.shared.settings import Settings, redact_url

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
HIDE_BROKEN_IMAGE = "this.remove()"
"""The one script on any page: a cover's `onerror`, so a cover that cannot load leaves its placeholder showing."""
_HANDLER_HASH = base64.b64encode(hashlib.sha256(HIDE_BROKEN_IMAGE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: http: data:; "
    f"script-src 'unsafe-hashes' 'sha256-{_HANDLER_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Pages load only their own stylesheet and cover images, run only the cover handler, post only to themselves and
cannot be framed (so no other site can overlay the action buttons)."""
STATUS_OF = (
    (VersionNotFound, 404),
    (ValidationError, 400),
    (CatalogueMismatch, 409),
    (CorruptVersion, 500),
    (ModelStoreError, 409),  # nothing to roll back to, a damaged production record
    (RedisUnavailable, 503),
    (RatingsStoreError, 503),
)
"""The HTTP status of a bookrec error a page or an action ends with (any other: 500)."""


def status_of(exc: BookrecError) -> int:
    """The HTTP status for `exc` (see STATUS_OF)."""
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 500)


def create_app(settings: Settings | None = None, client: Client | None = None) -> Starlette:
    """The dashboard of the deployment `settings` describe (default: from the environment); `client` to share a
    Redis connection (tests pass one on fakeredis)."""
    settings = settings or Settings.from_env()
    sources = Sources(settings, client)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        sources.close()

    app = Starlette(
        routes=[
            Route("/", overview_page),
            Route("/versions", versions_page),
            Route("/versions/{version}", version_page),
            Route("/reader", reader_page),
            Route("/promote", promote, methods=["POST"]),
            Route("/rollback", rollback, methods=["POST"]),
            Route("/recompute", recompute, methods=["POST"]),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={
            HTTPException: http_error,
            BookrecError: bookrec_error,
            redis.exceptions.ConnectionError: redis_error,
            redis.exceptions.TimeoutError: redis_error,
            Exception: internal_error,
        },
        middleware=[Middleware(SecurityHeaders)],
        lifespan=lifespan,
    )
    app.state.sources = sources
    app.state.templates = _templates()
    return app


class SecurityHeaders:
    """ASGI middleware adding the Content-Security-Policy and the other headers every response carries."""

    HEADERS = (
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    env.globals["hide_broken_image"] = HIDE_BROKEN_IMAGE
    return Jinja2Templates(env=env)


def _sources(request: Request) -> Sources:
    return request.app.state.sources


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """`template` rendered with `context` and what every page shows (the deployment, whether actions are on)."""
    settings = _sources(request).settings
    common = {
        "deployment": {
            "prefix": settings.key_prefix,
            "redis": settings.redis_endpoint,
            "database": redact_url(settings.database_url),
            "models": str(settings.model_store),
        },
        "actions_enabled": settings.dashboard_token is not None,
        "read_only_reason": actions.READ_ONLY,
        "message": None,
        "problem": None,
    }
    return request.app.state.templates.TemplateResponse(request, template, {**common, **context}, status_code=status)


def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    """The error page: a title and one message saying what went wrong and what to do."""
    return render(request, "error.html", status, title=title, detail=detail)


def overview_page(request: Request) -> Response:
    """GET /: the overview."""
    return render(request, "overview.html", view=overview(_sources(request)))


def versions_page(request: Request) -> Response:
    """GET /versions: every version in the store, with promote and rollback."""
    return versions_response(request)


def versions_response(request: Request, status: int = 200, **message: str) -> Response:
    """The versions page, with the outcome of an action as `message` (done) or `problem` (refused, failed)."""
    models = _sources(request).models
    return render(
        request,
        "versions.html",
        status,
        versions=list(reversed(models.list())),
        production=models.production(),
        rollback_to=models.rollback_target(),
        **message,
    )


def version_page(request: Request) -> Response:
    """GET /versions/{version}: one version's metadata, metrics beside the baselines, learning curves."""
    try:
        view = version_view(_sources(request).models, request.path_params["version"])
    except (VersionNotFound, ValidationError) as exc:
        return error_page(request, 404, "No such model version", str(exc))
    return render(request, "version.html", view=view)


def reader_page(request: Request) -> Response:
    """GET /reader?user=ID: one reader's cached list and ratings (a search form without `user`)."""
    user = request.query_params.get("user", "").strip()
    if not user:
        return render(request, "reader.html", view=None, user="")
    return reader_response(request, user)


def reader_response(request: Request, user: str, status: int | None = None, **message: str) -> Response:
    """Reader `user`'s page, 404 when the deployment holds nothing about them, with an action's outcome."""
    try:
        view = reader_view(_sources(request), user)
    except ValidationError as exc:
        return error_page(request, 400, "Not a reader id", str(exc))
    code = status or (200 if view.known else 404)
    return render(request, "reader.html", code, view=view, user=view.user, **message)


def healthz(request: Request) -> Response:
    """GET /healthz: the server answers (it checks nothing else; the pages say what is down)."""
    return JSONResponse({"ok": True})


async def _action(request: Request, name: str) -> tuple[FormData, str, str | None]:
    """The action's form, who sent it, and why it is refused (None: the token is right); a refusal is logged."""
    form = await request.form()
    who = request.client.host if request.client else "unknown"
    reason = actions.refusal(_sources(request).settings.dashboard_token, actions.presented_token(request.headers, form))
    if reason is not None:
        actions.log_refused(name, who, reason)
    return form, who, reason


async def promote(request: Request) -> Response:
    """POST /promote (form: version, force, token): put a version in production; the versions page with the outcome."""
    form, who, refused = await _action(request, "promote")
    version = str(form.get("version", ""))
    if refused is not None:
        return await run_in_threadpool(versions_response, request, 403, problem=f"promotion refused: {refused}")
    try:
        event = await run_in_threadpool(actions.promote, _sources(request), who, version, form.get("force") == "on")
    except BookrecError as exc:
        return await run_in_threadpool(versions_response, request, status_of(exc), problem=str(exc))
    done = (
        f"promoted {version} (was {event['previous'] or 'none'}); every worker swaps to it between jobs, and refresh "
        f"job {event['refresh_job']} recomputes every cached list"
    )
    return await run_in_threadpool(versions_response, request, message=done)


async def rollback(request: Request) -> Response:
    """POST /rollback (form: token): production one step back; the versions page with the outcome."""
    _, who, refused = await _action(request, "rollback")
    if refused is not None:
        return await run_in_threadpool(versions_response, request, 403, problem=f"rollback refused: {refused}")
    try:
        event = await run_in_threadpool(actions.rollback, _sources(request), who)
    except BookrecError as exc:
        return await run_in_threadpool(versions_response, request, status_of(exc), problem=str(exc))
    done = f"rolled back to {event['version']} (was {event['previous']}); every worker swaps to it between jobs"
    return await run_in_threadpool(versions_response, request, message=done)


async def recompute(request: Request) -> Response:
    """POST /recompute (form: user, token): a recommend job for the reader; their page with the outcome."""
    form, who, refused = await _action(request, "recompute")
    user = str(form.get("user", ""))
    if refused is not None:
        return await run_in_threadpool(reader_response, request, user, 403, problem=f"recompute refused: {refused}")
    try:
        job = await run_in_threadpool(actions.recompute, _sources(request), who, user)
    except BookrecError as exc:
        return error_page(request, status_of(exc), "Recompute failed", str(exc))
    done = f"recompute enqueued as recommend job {job}; reload this page to see the new list"
    return await run_in_threadpool(reader_response, request, user, 200, message=done)


def http_error(request: Request, exc: HTTPException) -> Response:
    """A route that does not exist (404) or a method it does not take (405), as a page."""
    titles = {404: "Not found", 405: "Method not allowed"}
    return error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))


def bookrec_error(request: Request, exc: BookrecError) -> Response:
    """A bookrec error a page ended with (Redis or the ratings store down, a damaged store), as a page."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_page(request, status_of(exc), type(exc).__name__, str(exc))


def redis_error(request: Request, exc: Exception) -> Response:
    """Redis did not answer while a page read it: 503 with the URL's password hidden."""
    return bookrec_error(request, unavailable(_sources(request).settings, exc))


def internal_error(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its traceback, and a page that shows no detail of it (it could hold a secret)."""
    log.exception("%s %s failed", request.method, request.url.path)
    return error_page(request, 500, "Internal error", "the dashboard failed on this page; its log says why")
