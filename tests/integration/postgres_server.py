"""A private PostgreSQL 15 cluster for tests that stop the ratings store under a running ingest and start it again.

`initdb` makes a cluster in a temporary directory of its own (trust auth for user postgres), `start` and `stop` run
`pg_ctl` on it, listening on 127.0.0.1 at a free port only. initdb refuses to run as root, so as root every command
runs as the user `postgres` (`runuser -u postgres --`) and the directory is chowned to it, as .ci/run does; pytest's
tmp_path is no use here, being readable by root only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.redis_server import free_port

PG_BIN = Path(os.environ.get("BOOKREC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def unavailable() -> str | None:
    """Why a private cluster cannot be made here (no pg_ctl, or root without runuser or a `postgres` user), None if
    it can."""
    if not (PG_BIN / "pg_ctl").exists():
        return f"no pg_ctl in {PG_BIN} (apt-get install postgresql-15, or set BOOKREC_TEST_PG_BIN)"
    if os.getuid() != 0:
        return None
    if shutil.which("runuser") is None:
        return "running as root without runuser, and initdb refuses root"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no user postgres to run initdb as"
    return None


class PostgresServer:
    """A cluster made by initdb on 127.0.0.1:`port`, started and stopped (`pg_ctl stop -m MODE`) by the test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bookrec-pg-"))
        if os.getuid() == 0:
            shutil.chown(self.root, user="postgres")
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def url(self, database: str = "postgres", password: str = "") -> str:
        """SQLAlchemy URL of `database` as user postgres (a password is accepted and ignored: trust auth)."""
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://postgres{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start (or restart) the cluster and wait until it accepts connections."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster: `immediate` is a crash (no checkpoint, WAL replayed at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the cluster if it runs and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(PG_BIN / program), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()} {tail}")
