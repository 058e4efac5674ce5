"""bookrec programs in subprocesses, for the programs that run the service themselves: the demo, the benchmarks, the
tests.

Imports no TensorFlow: the supervisor it starts (`python -m bookrec.worker.serve.supervisor`, what
`bookrec worker` runs) runs each worker in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class ChildProcess:
    """A bookrec program (`command`) in a subprocess with `env`, its output in `log` (appended)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path | None = None) -> None:
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log:
                out.close()

    def exit_code(self) -> int | None:
        """The process's exit code, or None while it runs."""
        return self.process.poll()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the process (it finishes what it is doing), wait, kill it if it hangs; return its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit, kill it if it has not within `timeout` seconds; return its exit code."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log, for error messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else "(no log)"


class WorkerProcesses(ChildProcess):
    """A supervisor of N worker processes on queues Q in a subprocess, its output in `log` (appended)."""

    def __init__(self, env: dict[str, str], queues: str, processes: int, log: Path | None = None) -> None:
        self.queues, self.processes = queues, processes
        command = [sys.executable, "-m", "bookrec.worker.serve.supervisor", "--queues", queues]
        super().__init__([*command, "--processes", str(processes)], env, log)


class IngestProcess(ChildProcess):
    """One real `bookrec ingest` process (`python -m bookrec ingest`) with `env`, its output in `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__([sys.executable, "-m", "bookrec", "ingest"], env, log)
