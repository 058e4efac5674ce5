"""`pip install bookrec` without the `[worker]` extra: the client-side commands work, the others say what is missing.

A fresh interpreter whose imports of the worker side's libraries fail, as on an install without
them, runs `bookrec.cli.main`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

WITHOUT_WORKER_SIDE = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'tensorflow', 'keras', 'pandas', 'numpy', 'matplotlib'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
from bookrec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def bookrec(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "BOOKREC_MODEL_STORE": str(tmp_path / "models"),
        "BOOKREC_DATA_DIR": str(tmp_path),
        "BOOKREC_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_WORKER_SIDE, *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["train", "--ratings", "ratings.csv"], "bookrec train"),
        (["worker"], "bookrec worker"),
        (["init"], "bookrec init"),
        (["data", "inspect", "ratings.csv"], "bookrec data inspect"),
        (["data", "synth", "--out", "x"], "bookrec data synth"),
        (["demo"], "bookrec demo"),
        (["bench", "--quick"], "bookrec bench"),
    ],
)
def test_a_worker_side_command_says_it_needs_the_worker_extra(args: list[str], command: str, tmp_path: Path) -> None:
    done = bookrec(args, tmp_path)

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bookrec: error: `{command}` needs bookrec[worker] (pip install 'bookrec[worker]'); "
        f"not installed: {'tensorflow, keras, numpy, pandas'}"
    ]


def test_client_side_commands_still_run(tmp_path: Path) -> None:
    assert bookrec(["--help"], tmp_path).returncode == 0
    listing = bookrec(["models", "list"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    status = bookrec(["status"], tmp_path)  # no Redis at that address: the client's own one-line error
    assert status.returncode == 4 and "did not answer" in status.stderr and "Traceback" not in status.stderr
