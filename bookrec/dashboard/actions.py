"""The dashboard's actions: promote a version, roll production back, recompute a reader's list. Each needs the
dashboard's token (BOOKREC_DASHBOARD_TOKEN) in the form's `token` field or an `Authorization: Bearer` header, compared
in constant time; without a configured token the dashboard is read-only and refuses every action. Every action and
every refusal is logged with who sent it (the client's address) and what it asked, never with a token.

The actions themselves are the producer's: `Client.promote` and `Client.rollback` (the one promote path: store record,
pointer, event, refresh) and `Client.recommend` (a recommend job for the reader)."""

from __future__ import annotations

import hmac
import logging
from typing import Mapping

from bookrec.dashboard.sources import Sources

log = logging.getLogger(__name__)

PROMOTE_REASON = "bookrec dashboard"
"""The reason a promotion from the dashboard records in production's history and its event."""
TOKEN_FIELD = "token"
READ_ONLY = (
    "this dashboard is read-only: start `bookrec dashboard` with BOOKREC_DASHBOARD_TOKEN set to allow promotions, "
    "rollbacks and recomputes"
)
NO_TOKEN = "this action needs the dashboard's token: type it into the token field (or send Authorization: Bearer …)"
WRONG_TOKEN = "the token given is not the dashboard's token"


def presented_token(headers: Mapping[str, str], form: Mapping[str, object]) -> str | None:
    """The token a request presents: its `Authorization: Bearer` header's, else its form's `token` field (None)."""
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    value = form.get(TOKEN_FIELD)
    return value if isinstance(value, str) and value else None


def refusal(expected: str | None, presented: str | None) -> str | None:
    """Why an action is refused (read-only dashboard, no token, a wrong one), or None when `presented` is the token."""
    if expected is None:
        return READ_ONLY
    if presented is None:
        return NO_TOKEN
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        return WRONG_TOKEN
    return None


def log_refused(action: str, who: str, reason: str) -> None:
    """Log a refused action: what, from whom, why."""
    log.warning("refused %s from %s: %s", action, who, reason)


def promote(sources: Sources, who: str, version: str, force: bool) -> dict:
    """Promote `version` (CatalogueMismatch unless `force` when it was trained on another catalogue); the event."""
    log.info("promote %s%s asked by %s", version, " (force)" if force else "", who)
    event = sources.client.promote(version, reason=PROMOTE_REASON, force=force)
    log.info("promoted %s (was %s) for %s; refresh job %s", version, event["previous"], who, event["refresh_job"])
    return event


def rollback(sources: Sources, who: str) -> dict:
    """Roll production back one step (ModelStoreError when there is nothing to roll back to); the event."""
    log.info("rollback asked by %s", who)
    event = sources.client.rollback()
    log.info("rolled back to %s (was %s) for %s", event["version"], event["previous"], who)
    return event


def recompute(sources: Sources, who: str, user: str) -> str:
    """Enqueue a recommend job for reader `user` (ValidationError for a bad id); its job id."""
    (job,) = sources.client.recommend([user], n=sources.settings.cache_n)
    log.info("recompute of reader %s enqueued as job %s for %s", user, job.id, who)
    return job.id
