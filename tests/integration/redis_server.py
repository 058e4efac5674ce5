"""A private `redis-server` for tests that stop Redis, restart it empty, or need a password, ACL user or TLS.

Each server runs on a free port with no persistence (so a restart comes back empty) unless `extra` turns it on
(`--appendonly yes`: a restart in the same workdir reloads the data), and logs to a file; `start` returns once the
log says it accepts connections (after loading its data). `make_certificates` writes
a throw-away CA and a server certificate for 127.0.0.1 with the openssl command.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

READY = "Ready to accept connections"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """`redis-server` on 127.0.0.1 with `extra` arguments (e.g. `--requirepass`), started and stopped by the test."""

    def __init__(self, workdir: Path, extra: tuple[str, ...] = (), tls: Path | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("these tests need the redis-server binary on PATH")
        self.workdir, self.extra, self.tls = workdir, extra, tls
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def url(self, scheme: str = "redis", credentials: str = "", db: int = 0) -> str:
        """URL of this server, e.g. url(credentials="user:pass") -> redis://user:pass@127.0.0.1:PORT/0."""
        at = f"{credentials}@" if credentials else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port: empty, or with the data its persistence kept) and wait until it
        accepts connections."""
        self.starts += 1
        log = self.workdir / f"redis-{self.port}-{self.starts}.log"
        command = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
            "--dir",
            str(self.workdir),
            *self._port_args(),
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and READY in log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: {log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start within {timeout} s; see {log}")

    def stop(self) -> None:
        """Stop the server (SIGTERM; nothing is saved) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """Kill the server (SIGKILL, as a crash: only what its persistence already wrote survives) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _port_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls / "server.crt"),  # TLS only
            "--tls-key-file",
            str(self.tls / "server.key"),
            "--tls-ca-cert-file",
            str(self.tls / "ca.crt"),
            "--tls-auth-clients",
            "no",
        ]


def make_certificates(folder: Path) -> Path:
    """Write ca.crt, server.crt and server.key (for 127.0.0.1 and localhost, valid one day) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=bookrec-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], cwd=folder, check=True, capture_output=True)
    return folder


class SentinelGroup:
    """A master, `replicas` replicas and three sentinels (quorum 2) on free ports, as Redis documents a minimal
    Sentinel deployment; sentinels call the master down after `down_after_ms` without an answer."""

    MASTER = "bookrec"

    def __init__(self, workdir: Path, replicas: int = 2, down_after_ms: int = 1000) -> None:
        self.workdir, self.down_after_ms = workdir, down_after_ms
        self.master = RedisServer(workdir)
        self.replicas = [
            RedisServer(workdir, ("--replicaof", "127.0.0.1", str(self.master.port))) for _ in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def addresses(self) -> str:
        """BOOKREC_REDIS_SENTINELS for this group."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self, timeout: float = 30.0) -> None:
        """Start every server and return once each sentinel knows the replicas and the other sentinels."""
        self.master.start()
        for replica in self.replicas:
            replica.start()
        for port in self.sentinel_ports:
            config = self.workdir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\nlogfile {self.workdir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} {len(self.replicas)}\n"
            )
            self.sentinels.append(subprocess.Popen(["redis-server", str(config), "--sentinel"]))
        deadline = time.monotonic() + timeout
        while not self._settled():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not discover each other within {timeout} s; see {self.workdir}")
            time.sleep(0.1)

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            try:
                reply = self._ask(port, "SENTINEL", "get-master-addr-by-name", self.MASTER)
            except redis.exceptions.ConnectionError:
                continue
            return int(reply[1])
        return None

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
            process.wait(timeout=10)
        for server in (self.master, *self.replicas):
            server.stop()

    def _settled(self) -> bool:
        try:
            for port in self.sentinel_ports:
                replicas = self._ask(port, "SENTINEL", "replicas", self.MASTER)
                others = self._ask(port, "SENTINEL", "sentinels", self.MASTER)
                if len(replicas) < len(self.replicas) or len(others) < 2:
                    return False
        except redis.exceptions.ConnectionError:
            return False
        return True

    @staticmethod
    def _ask(port: int, *command: str) -> list:
        with redis.Redis(port=port, socket_timeout=2, decode_responses=True) as client:
            return client.execute_command(*command)
