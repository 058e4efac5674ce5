"""The service under test: a Redis database of its own and real `bookrec worker` supervisors in subprocesses.

RQ keeps global keys (`rq:workers`, `rq:queues`) and the benchmark flushes what it wrote, so it
needs a whole database, not just the `bench:` key prefix (which also names its queues,
`bench:recommend`...): it claims one that is empty (or left by an earlier benchmark), marks it,
and flushes it when done.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import Worker

from bookrec.shared import worker_state
from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUE_RECOMMEND, QUEUE_REFRESH, Keys
from bookrec.shared.redis_conn import connect, ping
from bookrec.shared.settings import Settings
from bookrec.worker.serve.launch import WorkerProcesses

PREFIX = "bench:"
OWNER_KEY = f"{PREFIX}owner"


@dataclass
class Service:
    """Settings, Redis client and key schema of the benchmarked service."""

    settings: Settings
    client: redis.Redis
    keys: Keys

    @classmethod
    def claim(cls, redis_url: str, store: Path, data_dir: Path) -> "Service":
        """Take the database in `redis_url`: it must be empty, or hold the keys of a benchmark that is no longer running."""
        settings = Settings(redis_url=redis_url, model_store=store, data_dir=data_dir, key_prefix=PREFIX, tf_threads=1)
        client = connect(settings, socket_timeout=30.0)
        ping(client, settings)
        size, owner = client.dbsize(), client.get(OWNER_KEY)
        if size and owner is None:
            raise BookrecError(
                f"Redis database {settings.redis_url_redacted} holds {size} keys that are not the benchmark's; "
                "choose an empty database with --redis-db"
            )
        if owner is not None and _running(owner.decode()):
            raise BookrecError(
                f"Redis database {settings.redis_url_redacted} is in use by a benchmark still running ({owner.decode()}); "
                "wait for it or choose another database with --redis-db"
            )
        service = cls(settings, client, Keys(PREFIX))
        service.reset()
        return service

    def reset(self) -> None:
        """Empty the database (between phases too), marked as this benchmark's."""
        self.client.flushdb()
        self.client.set(OWNER_KEY, f"{socket.gethostname()}:{os.getpid()}")

    def release(self) -> None:
        """Delete everything the benchmark wrote to its database."""
        self.client.flushdb()
        self.client.close()

    def env(self, tf_threads: int = 1, **extra: str) -> dict[str, str]:
        """Environment for a `bookrec` subprocess of this service."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
        env.update(
            BOOKREC_REDIS_URL=self.settings.redis_url,
            BOOKREC_MODEL_STORE=str(self.settings.model_store),
            BOOKREC_DATA_DIR=str(self.settings.data_dir),
            BOOKREC_KEY_PREFIX=PREFIX,
            BOOKREC_TF_THREADS=str(tf_threads),
            TF_CPP_MIN_LOG_LEVEL="2",
            **extra,
        )
        return env

    def queue(self, name: str) -> Queue:
        """This service's RQ queue for logical queue `name` (JSON serializer)."""
        return Queue(self.keys.queue(name), connection=self.client, serializer=JSONSerializer)

    def serving_workers(self) -> dict[str, dict[str, str]]:
        """State of each live serving worker process: {name: {"version", "pid", ...}} (a SCAN: not for tight loops)."""
        return {state["name"]: state for state in worker_state.read_all(self.client, self.keys)}

    def versions(self, names: list[str]) -> list[str | None]:
        """The version each named worker serves (None if it has no state), in one round trip."""
        return worker_state.versions(self.client, self.keys, names)

    def jobs_done(self) -> int:
        """Jobs the live workers have finished successfully, by RQ's own count."""
        return sum(w.successful_job_count for w in Worker.all(connection=self.client))

    def pids_serving(self, version: str) -> list[int]:
        """Process ids of the serving workers that have `version` loaded."""
        return sorted(int(s["pid"]) for s in self.serving_workers().values() if s.get("version") == version)


def _running(owner: str) -> bool:
    """Whether the process an owner mark (`host:pid`) names is alive; a mark from another host counts as alive."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


class Pool:
    """A real `bookrec worker --processes N` supervisor of this service in a subprocess, its output in a log file."""

    def __init__(
        self,
        service: Service,
        processes: int,
        log: Path,
        queues: str = f"{QUEUE_RECOMMEND},{QUEUE_REFRESH}",
        tf_threads: int = 1,
        **env: str,
    ) -> None:
        self.service = service
        self.workers = WorkerProcesses(service.env(tf_threads, **env), queues, processes, log)

    def wait_serving(self, version: str, timeout: float = 180.0) -> list[int]:
        """Wait until this pool's processes all serve `version`; return their pids."""
        return self._wait(lambda: self.service.pids_serving(version), f"serve {version}", timeout)

    def wait_listening(self, timeout: float = 180.0) -> list[int]:
        """Wait until this pool's processes are all waiting on its first queue (for a trainer, which loads no model)."""
        queue = self.service.queue(self.workers.queues.split(",")[0])

        def listening() -> list[int]:
            return [w.pid for w in Worker.all(queue=queue) if w.pid]

        return self._wait(listening, f"listen on {queue.name}", timeout)

    def _wait(self, ready, what: str, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = ready()
            if len(pids) >= self.workers.processes:
                return pids
            if self.workers.exit_code() is not None:
                raise BookrecError(
                    f"the benchmark's worker supervisor exited with {self.workers.exit_code()}; see {self.workers.log}"
                )
            time.sleep(0.1)
        raise BookrecError(
            f"{self.workers.processes} worker processes did not {what} within {timeout:.0f} s; see {self.workers.log}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the supervisor (each worker finishes its job) and wait; kill it if it hangs."""
        self.workers.stop(timeout)


def with_db(url: str, db: int) -> str:
    """`url` pointing at database `db` instead of the one it names."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))
