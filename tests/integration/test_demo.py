"""`bookrec demo` (what `make demo` runs) as a new user runs it: a real process in an empty directory, with no Redis
answering at BOOKREC_REDIS_URL, so it starts its own redis-server, workers, trainer and ingest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="the demo's own Redis needs redis-server")
def test_the_demo_shows_real_books_and_a_list_that_changes_when_its_reader_rates(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.update(BOOKREC_REDIS_URL="redis://127.0.0.1:1/0", PYTHONPATH=str(REPO))  # nothing answers on port 1

    done = subprocess.run(
        [sys.executable, "-m", "bookrec", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )

    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "started redis-server" in out and out.rstrip().endswith("demo finished: OK")
    assert "Synthetic Book" not in out
    new_reader = out[out.index("user no-such-reader (new reader: most popular books)") :]
    assert "Harry Potter and the Sorcerer's Stone (Harry Potter, #1)" in new_reader.split("\n== ")[0]
    assert re.search(r"^user 1, model v\d+T\d+Z:\nrated \d+ books, among them: ", out, re.M)
    rated = re.search(r"reader 2 has read nothing of the series '(?P<series>[^']+)'; they rate its first 3 books", out)
    assert rated is not None
    assert len(re.findall(r"^\$ bookrec rate 2 \d+ 5", out, re.M)) == 3
    changed = re.search(r"^the list changed as soon as the ratings were ingested: (?P<new>\d+) new books", out, re.M)
    assert changed is not None and int(changed["new"]) >= 1
    assert "failed jobs: 0" in out
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/ \(read-only; ", out, re.M), "it answered its health check"
    for part in ("workers", "trainer", "ingest"):  # each printed once its /metrics answered with bookrec_ series
        assert re.search(rf"^metrics of the {part}: http://127\.0\.0\.1:\d+/metrics$", out, re.M), part
