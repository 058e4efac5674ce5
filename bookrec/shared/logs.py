"""Logging setup shared by every process: one format, level from settings, secrets kept out."""

from __future__ import annotations

import logging
import re

from bookrec.shared.settings import redact_url

_REDIS_URL = re.compile(r"(?:rediss?|unix)://[^\s'\"]+")


class RedactSecrets(logging.Filter):
    """Replace the credentials inside Redis URLs (as `redact_url` does) with `***` in every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _REDIS_URL.sub(lambda match: redact_url(match.group()), message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


HANDLER_NAME = "bookrec"
"""The name of the root logger's handler `setup_logging` adds."""


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once for a bookrec process."""
    root = logging.getLogger()
    if getattr(root, "_bookrec_configured", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    handler.addFilter(RedactSecrets())
    root.addHandler(handler)
    root.setLevel(level)
    root._bookrec_configured = True  # type: ignore[attr-defined]
