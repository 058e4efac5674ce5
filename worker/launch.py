"""`bookrec worker` in a subprocess, for the programs that run the service themselves: the demo, the benchmark, the tests.

Imports no TensorFlow: the supervisor it starts runs each worker in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from shared.keys import Keys

REPO = Path(__file__).resolve().parents[1]


class WorkerProcesses:
    """A `bookrec worker --queues Q --processes N` supervisor in a subprocess, its output in `log` (appended)."""

    def __init__(self, env: dict[str, str], queues: str, processes: int, log: Path | None = None) -> None:
        self.queues, self.processes, self.log = queues, processes, log
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "producer.cli", "worker", "--queues", queues, "--processes", str(processes)],
                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )
        finally:
            if log:
                out.close()

    def exit_code(self) -> int | None:
        """The supervisor's exit code, or None while it runs."""
        return self.process.poll()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the supervisor (each worker finishes its job), wait, kill it if it hangs; return its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for error messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else "(no log)"


def worker_states(client: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    """The state hash of every live serving worker (`version`, `pending_version`, `pid`, ...); a SCAN, not for tight loops."""
    states = []
    for key in client.scan_iter(match=keys.worker_pattern, count=1000):
        state = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        if state.get("name"):
            states.append(state)
    return states
