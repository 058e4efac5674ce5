"""The machine a benchmark ran on, how busy other processes kept it, and a process's memory (from /proc)."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BUSY_CORES = 0.25  # other processes using more than this many cores on average: the machine was busy


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of process `pid` in MB (VmRSS from /proc/PID/status; `VmHWM`: its peak so far); OSError if
    it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/{pid}/status has no {field} line")


def rss_by_pid(pids: list[int]) -> dict[int, float]:
    """`rss_mb` of each of `pids`."""
    return {pid: rss_mb(pid) for pid in pids}


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / ticks


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has waited for (and theirs, recursively)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuMeter:
    """Average cores used by processes other than this one and its children, between start and `cores_used_by_others`.

    Children are counted once they have been waited for, so read it after stopping them.
    """

    started: float
    busy: float
    own: float

    @classmethod
    def start(cls) -> "CpuMeter":
        """Begin measuring now."""
        return cls(time.monotonic(), _busy_seconds(), _own_cpu_seconds())

    def cores_used_by_others(self) -> float:
        """Average number of cores other processes kept busy since `start`."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        others = (_busy_seconds() - self.busy) - (_own_cpu_seconds() - self.own)
        return max(others, 0.0) / elapsed


def idle_load(seconds: float = 1.0) -> float:
    """Cores other processes use right now, sampled over `seconds` while this process sleeps."""
    meter = CpuMeter.start()
    time.sleep(seconds)
    return meter.cores_used_by_others()


def host() -> dict[str, Any]:
    """Date, cores, CPU model, memory, load average and Python's version, as they are now (imports no TensorFlow)."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
    }


def describe(redis_version: str | None) -> dict[str, Any]:
    """`host()` and the versions of TensorFlow, numpy, RQ, SQLAlchemy, psycopg and the Redis server (read from
    the installed distributions, nothing imported)."""
    return {
        **host(),
        **{module: _installed_version(module) for module in ("tensorflow", "numpy", "rq", "sqlalchemy", "psycopg")},
        "redis_server": redis_version,
    }


def _installed_version(module: str) -> str | None:
    """The version of the installed distribution that provides `module` (tensorflow: tensorflow-cpu), without
    importing it; None if none does."""
    for distribution in metadata.packages_distributions().get(module, []):
        return metadata.version(distribution)
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
