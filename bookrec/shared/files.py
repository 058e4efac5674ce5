"""Files that appear whole or not at all: what every part that writes a file readers may see uses."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


@contextmanager
def atomic_path(path: Path, prefix: str | None = None) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` (synced to disk) only when the block
    completes, and is removed on any error, so readers see the old file or the whole new one, never a part.

    `prefix` names the temporary file (default `.NAME.`), for cleaners that look for it.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=".part")
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        with temp.open("rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_text(path: Path, prefix: str | None = None) -> Iterator[TextIO]:
    """A UTF-8 text file (newlines as written) that appears at `path` only when the block completes (see `atomic_path`)."""
    with atomic_path(path, prefix) as temp, temp.open("w", encoding="utf-8", newline="") as handle:
        yield handle
