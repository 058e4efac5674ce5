"""Serving Prometheus metrics over HTTP (prometheus_client), for every bookrec process that exports some.

One port per process that serves: `bookrec worker`'s supervisor (BOOKREC_METRICS_PORT) serves what all its worker
processes count, through prometheus_client's multiprocess mode (`WorkerMetricsDir`): each worker writes its metrics
into memory-mapped files in a directory the supervisor made for them, and the supervisor, which never loads
TensorFlow, reads them at each scrape. `bookrec ingest` (BOOKREC_INGEST_METRICS_PORT) and `bookrec scheduler`
(BOOKREC_SCHEDULER_METRICS_PORT) are one process each and serve their own registry. Port 0 serves nothing.
The metrics themselves live beside what they count: worker/serve/metrics.py, ingest/metrics.py, scheduler/metrics.py
(README: Metrics).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable that puts prometheus_client into multiprocess mode, read when it is first imported."""


@dataclass
class MetricsServer:
    """An HTTP server answering every GET (`/metrics` by convention) with the metrics of one registry."""

    server: WSGIServer
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        """Stop answering and close the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(registry: CollectorRegistry, host: str, port: int, what: str) -> MetricsServer | None:
    """Serve `registry` on `host`:`port` from a daemon thread; None when `port` is 0, or when the port cannot be
    bound (logged as an error naming `what` and the port: the process goes on without metrics, since a busy port
    must not stop the service)."""
    if not port:
        logger.info("%s: metrics off (port 0)", what)
        return None
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        logger.error(
            "%s: cannot serve metrics on %s:%d (%s); running without them. Another bookrec process may hold the "
            "port: give each one its own (README: Metrics)",
            what,
            host,
            port,
            exc.strerror or exc,
        )
        return None
    url = f"http://{host}:{server.server_port}/metrics"
    logger.info("%s: metrics on %s", what, url)
    return MetricsServer(server, thread, url)


class WorkerMetricsDir:
    """The directory a supervisor's worker processes write their metrics into (prometheus_client's multiprocess
    mode): made fresh for each supervisor, so nothing of an earlier run is counted, and removed when it stops."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="bookrec-metrics-")

    def env(self) -> dict[str, str]:
        """What a worker process's environment needs to write its metrics here."""
        return {MULTIPROC_ENV: self.path}

    def registry(self, *collectors: Collector) -> CollectorRegistry:
        """A registry holding the metrics of every worker process written here, plus `collectors`."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)
        for collector in collectors:
            registry.register(collector)
        return registry

    def process_dead(self, pid: int) -> None:
        """Forget the per-process gauges of worker `pid`, which has exited (its counters stay in the totals)."""
        mark_process_dead(pid, self.path)

    def remove(self) -> None:
        """Remove the directory and every file in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def process_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of this one process's metrics (prometheus_client's default registry: what its modules count, and
    the process's CPU, memory and garbage collections) plus `collectors`, without the counters' `_created` series
    (Prometheus would store each as a series of its own)."""
    disable_created_metrics()
    registry = CollectorRegistry()
    for collector in (REGISTRY, *collectors):
        registry.register(collector)
    return registry


def without_multiprocess(env: dict[str, str]) -> dict[str, str]:
    """`env` without PROMETHEUS_MULTIPROC_DIR: the environment of a worker whose supervisor exports no metrics."""
    return {k: v for k, v in env.items() if k != MULTIPROC_ENV}
