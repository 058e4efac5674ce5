"""The supervisor behind `bookrec worker`: starts N worker processes, restarts any that die, stops them cleanly.

Its own entry: `python -m bookrec.worker.serve.supervisor --queues Q1,Q2 --processes N [--burst]`
(what `bookrec worker` runs, without going through the CLI).

The supervisor itself never imports TensorFlow: each worker is a fresh interpreter
(`python -m bookrec.worker.serve.process`), so no process ever forks with TensorFlow loaded. When a worker
dies mid-job (killed, out of memory), the job it held is handed back to the queue at once
(see `recover_abandoned`) instead of waiting for RQ's timeout-based cleanup, and a swap slot it
held while loading a model is given back (see `release_swap_slots`). When it starts, and every 20 s,
it also hands back the jobs of workers it never knew that died (a whole pool SIGKILLed with its
supervisor, a host lost), wherever in RQ's claim they died (see `Recovery`). Its workers die with it:
each gets SIGTERM from the kernel when the supervisor dies, and stops after its current job.
It serves the metrics of all its workers on one port (BOOKREC_METRICS_PORT; see shared/metrics.py): each worker
writes them into a directory the supervisor made for this run, and the supervisor reads them at each scrape.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import redis

from bookrec.shared.errors import BookrecError
from bookrec.shared.keys import QUEUES, SERVING_QUEUES, Keys
from bookrec.shared.logs import setup_logging
from bookrec.shared.metrics import MetricsServer, WorkerMetricsDir, without_multiprocess
from bookrec.shared.metrics import serve as serve_metrics
from bookrec.shared.redis_conn import connect
from bookrec.shared.settings import Settings
from bookrec.worker.serve.supervisor_metrics import SupervisorCollector
from bookrec.worker.serve.swap_slots import SwapSlots

logger = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0
STOP_GRACE_SECONDS = 30.0
RECOVERY_INTERVAL = 20.0  # how often the supervisor looks for jobs that dead workers held
WORKER_SILENT_S = 20.0
"""A worker of another host that sent no heartbeat for this long (by Redis's clock) is dead: its host is cut off or
gone. Workers beat every second (rq_worker.HEARTBEAT_SECONDS), from a thread of their own, busy or not."""
SERVING_MMAP_THRESHOLD = 128 * 1024
"""Bytes above which a serving worker's malloc maps a buffer on its own (`Supervisor._worker_env`)."""
CLAIM_GRACE_SECONDS = 2.0  # a job popped by no live worker for this long (two sweeps apart) is handed back
JOB_KEY_PREFIX = "rq:job:"
DESCRIPTION = (
    "Start N worker processes. Each loads the production model, the book metadata and every "
    "user's rated books once, then serves jobs from the given queues in priority order, swapping to a newly "
    "promoted model between jobs. Dead processes are restarted and their job handed back to the queue. "
    "SIGTERM/Ctrl-C stops each process after its current job. Run a separate `--queues retrain` worker "
    "(the trainer) so training never starves serving. Serves the Prometheus metrics of all its processes on "
    "BOOKREC_METRICS_PORT (0: none; a second supervisor on the host needs its own)."
)


@dataclass
class Slot:
    """One worker process the supervisor keeps alive."""

    index: int
    process: subprocess.Popen | None = None
    name: str = ""
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    next_start: float = 0.0
    finished: bool = False


@dataclass
class Supervisor:
    """Keeps `processes` worker processes running on `queues`."""

    queues: list[str]
    processes: int
    burst: bool = False
    client: redis.Redis | None = None
    keys: Keys = field(default_factory=Keys)
    swap_slots: int = 1  # BOOKREC_SWAP_SLOTS: which slot keys a dead worker may have held
    metrics_host: str = "127.0.0.1"  # BOOKREC_METRICS_HOST
    metrics_port: int = 0  # BOOKREC_METRICS_PORT: 0 serves no metrics
    slots: list[Slot] = field(default_factory=list)
    stopping: bool = False
    recovery: Recovery | None = None
    metrics_dir: WorkerMetricsDir | None = None
    metrics_server: MetricsServer | None = None

    def run(self) -> int:
        """Start the processes and supervise until SIGTERM/SIGINT (or, with --burst, until all finish)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.slots = [Slot(i) for i in range(self.processes)]
        if self.client is not None:
            self.recovery = Recovery(self.client, [self.keys.queue(q) for q in self.queues])
        self._serve_metrics()
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                if self.burst and all(slot.finished for slot in self.slots):
                    break
                self._check()
                if self.recovery is not None:
                    self.recovery.sweep_if_due()
                time.sleep(0.2)
            return self._stop_all()
        finally:
            self._stop_metrics()

    def _serve_metrics(self) -> None:
        """Serve the metrics of every worker process (and the supervisor's own) on one port, unless it is 0 or busy."""
        if not self.metrics_port:
            return
        self.metrics_dir = WorkerMetricsDir()
        collector = SupervisorCollector(
            self.client, self.keys, [self.keys.queue(q) for q in self.queues], self._process_counts
        )
        self.metrics_server = serve_metrics(
            self.metrics_dir.registry(collector), self.metrics_host, self.metrics_port, "supervisor"
        )
        if self.metrics_server is None:
            self._stop_metrics()

    def _stop_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self.metrics_dir is not None:
            self.metrics_dir.remove()
            self.metrics_dir = None

    def _process_counts(self) -> tuple[int, int]:
        """(worker processes running, restarts so far), for the metrics."""
        alive = sum(1 for s in self.slots if s.process is not None and s.process.poll() is None)
        return alive, sum(s.restarts for s in self.slots)

    def _request_stop(self, signum, frame) -> None:
        logger.info("supervisor: %s received, stopping workers after their current job", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, slot: Slot) -> None:
        slot.name = f"bookrec-{socket.gethostname()}-{os.getpid()}-{slot.index}-{slot.restarts}"
        command = [
            sys.executable,
            "-m",
            "bookrec.worker.serve.process",
            "--queues",
            ",".join(self.queues),
            "--name",
            slot.name,
            "--supervisor",
            str(os.getpid()),
        ]
        if self.burst:
            command.append("--burst")
        slot.process = subprocess.Popen(command, env=self._worker_env())
        slot.started_at = time.monotonic()
        logger.info("supervisor: started worker %s (pid %d)", slot.name, slot.process.pid)

    def _worker_env(self) -> dict[str, str]:
        """The environment of a worker process: this one's, with the directory to write its metrics into when this
        supervisor serves them (`WorkerMetricsDir`), plus for a serving worker glibc's malloc told to map
        every buffer above SERVING_MMAP_THRESHOLD on its own (returned to the system when freed) and to keep two
        arenas, unless the operator set either. Without it glibc's moving threshold lets the scores of large batches
        (a 1,000-reader batch holds [1000, books] floats several times) settle in the heap, which grows and stays
        grown: measured in `bookrec bench --only fresh` (README: Fresh lists, measured)."""
        env = without_multiprocess(dict(os.environ))
        if self.metrics_dir is not None:
            env.update(self.metrics_dir.env())
        if set(self.queues) <= set(SERVING_QUEUES):
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(SERVING_MMAP_THRESHOLD))
            env.setdefault("MALLOC_ARENA_MAX", "2")
        return env

    def _check(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.finished:
                continue
            if slot.process is None:
                if now >= slot.next_start:
                    self._start(slot)
                continue
            code = slot.process.poll()
            if code is None:
                continue
            if self.metrics_dir is not None:
                self.metrics_dir.process_dead(slot.process.pid)
            if self.burst and code == 0:
                slot.finished = True
                continue
            logger.warning("supervisor: worker %s exited with code %s; restarting", slot.name, code)
            recover_abandoned(self.client, slot.name)
            if self.recovery is not None:
                self.recovery.sweep_soon()
            release_swap_slots(self.client, self.keys, self.swap_slots, slot.name)
            slot.backoff = 1.0 if now - slot.started_at > 60 else min(slot.backoff * 2, RESTART_BACKOFF_MAX)
            slot.restarts += 1
            slot.process = None
            slot.next_start = now + (0 if slot.restarts == 1 else slot.backoff)

    def _stop_all(self) -> int:
        running = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "supervisor: worker pid %d did not stop in %.0f s; killing it", process.pid, STOP_GRACE_SECONDS
                )
                process.kill()
                process.wait()
        codes = [s.process.returncode for s in self.slots if s.process is not None]
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1


@dataclass
class Recovery:
    """Hands back to `queues` (RQ names) every job a dead worker held, whichever supervisor it belonged to.

    A worker is dead when RQ no longer has its record, its record says it died, it ran on this host and its
    process is gone, or it runs on another host and has been silent for WORKER_SILENT_S. RQ claims a job in
    steps, and a worker can die after each: (1) the job is popped off its queue, in no list at all; (2) an
    execution is in the started registry; (3) the job is STARTED.
    (2) and (3) are found in the started registries; (1) as a job still `queued` that is in neither its
    queue nor its started registry in two sweeps CLAIM_GRACE_SECONDS apart (a live worker registers the
    execution within milliseconds). Sweeps run at start, CLAIM_GRACE_SECONDS later, then every RECOVERY_INTERVAL.
    """

    client: redis.Redis
    queues: list[str]
    host: str = field(default_factory=socket.gethostname)
    suspects: set[str] = field(default_factory=set)
    next_sweep: float = 0.0

    def sweep_if_due(self) -> list[str]:
        """Run a sweep if one is due; the ids of the jobs it handed back."""
        now = time.monotonic()
        if now < self.next_sweep:
            return []
        first = self.next_sweep == 0.0
        self.next_sweep = now + (CLAIM_GRACE_SECONDS if first else RECOVERY_INTERVAL)
        try:
            return self.sweep()
        except redis.exceptions.RedisError as exc:
            logger.warning("supervisor: could not look for the jobs of dead workers: %s", exc)
            return []

    def sweep_soon(self) -> None:
        """Sweep at the next check and again CLAIM_GRACE_SECONDS later, as at start: after a worker died, a job it
        had popped but not registered goes back within seconds instead of at the next RECOVERY_INTERVAL."""
        self.next_sweep = 0.0

    def sweep(self) -> list[str]:
        """Hand back the jobs of dead workers now (unclaimed ones only if they were unclaimed last sweep too)."""
        recovered = self._retire_dead_workers()
        for queue_name in self.queues:
            recovered += self._held_by_the_dead(queue_name)
        unclaimed = self._unclaimed()
        for job_id, queue_name in sorted(unclaimed.items()):
            if job_id in self.suspects and _requeue_unclaimed(self.client, queue_name, job_id):
                logger.warning(
                    "supervisor: job %s, popped by a worker that died, handed back to %s", job_id, queue_name
                )
                recovered.append(job_id)
        self.suspects = set(unclaimed) - set(recovered)
        return recovered

    def _retire_dead_workers(self) -> list[str]:
        """Recover the current job of every dead worker of this host still registered on the queues, and retire it."""
        from rq import Queue
        from rq.serializers import JSONSerializer
        from rq.worker import Worker

        found = {}
        for queue_name in self.queues:
            queue = Queue(queue_name, connection=self.client, serializer=JSONSerializer)
            for worker in Worker.all(queue=queue, serializer=JSONSerializer):
                found.setdefault(worker.name, worker)
        recovered = []
        for name in sorted(found):
            if worker_is_dead(self.client, name, self.host):
                logger.warning("supervisor: worker %s is dead; handing back its job", name)
                recovered += [job for job in [recover_abandoned(self.client, name)] if job]
        return recovered

    def _held_by_the_dead(self, queue_name: str) -> list[str]:
        """Hand back the started-registry entries of `queue_name` whose worker is dead; their job ids."""
        from rq.registry import StartedJobRegistry
        from rq.serializers import JSONSerializer

        registry = StartedJobRegistry(
            queue_name, connection=self.client, job_class=_job_class(), serializer=JSONSerializer
        )
        held: dict[str, list[str]] = {}
        for job_id, execution_id in registry.get_job_and_execution_ids():
            worker = self.client.hget(f"rq:execution:{job_id}:{execution_id}", "worker_name")
            if worker_is_dead(self.client, worker.decode() if worker else None, self.host):
                held.setdefault(job_id, []).append(f"{job_id}:{execution_id}")
        for job_id, entries in held.items():
            _hand_back(self.client, registry, queue_name, job_id, entries)
            logger.warning("supervisor: job %s of a dead worker handed back to queue %s", job_id, queue_name)
        return list(held)

    def _unclaimed(self) -> dict[str, str]:
        """{job id: queue} of the jobs still `queued` on these queues that are neither in their queue nor started."""
        from rq.registry import StartedJobRegistry

        queued = {}
        ids = [
            key[len(JOB_KEY_PREFIX) :]
            for key in map(bytes.decode, self.client.scan_iter(match=f"{JOB_KEY_PREFIX}*", count=1000))
        ]
        ids = [i for i in ids if ":" not in i]  # rq:job:{id}:dependents and the like are not jobs
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(JOB_KEY_PREFIX + job_id, "status", "origin")
            for job_id, (status, origin) in zip(ids, pipe.execute()):
                if status == b"queued" and origin is not None and origin.decode() in self.queues:
                    queued[job_id] = origin.decode()
        for queue_name in set(queued.values()):
            listed = {i.decode() for i in self.client.lrange(f"rq:queue:{queue_name}", 0, -1)}
            listed |= set(StartedJobRegistry(queue_name, connection=self.client).get_job_ids())
            queued = {j: q for j, q in queued.items() if q != queue_name or j not in listed}
        return queued


def worker_is_dead(client: redis.Redis, name: str | None, host: str) -> bool:
    """Whether RQ worker `name` is dead: no record, a recorded death, on `host` with its process gone, or on another
    host and silent for WORKER_SILENT_S (its process cannot be looked at from here)."""
    if not name:
        return True
    hostname, pid, death, beat = client.hmget(f"rq:worker:{name}", "hostname", "pid", "death", "last_heartbeat")
    if hostname is None or death is not None:
        return True
    if hostname.decode() == host:
        return not _running(int(pid or 0), name)
    return beat is not None and _silent_s(client, beat.decode()) > WORKER_SILENT_S


def _silent_s(client: redis.Redis, last_heartbeat: str) -> float:
    """Seconds since an RQ `last_heartbeat` (ISO UTC), by Redis's clock."""
    from rq.utils import utcparse

    seconds, micros = client.time()
    return seconds + micros / 1e6 - utcparse(last_heartbeat).timestamp()


def _running(pid: int, name: str) -> bool:
    """Whether process `pid` runs and is the worker `name` (its command line names it, where /proc shows it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            arguments = fh.read().split(b"\0")
    except OSError:
        return True  # no /proc: the pid is alive, assume it is the worker
    return arguments == [b""] or name.encode() in arguments  # empty while a process is being set up: assume it is


def _requeue_unclaimed(client: redis.Redis, queue_name: str, job_id: str) -> bool:
    """Put a job a dead worker popped but never registered back at the front of its queue (no try spent)."""
    from rq import Queue
    from rq.intermediate_queue import IntermediateQueue
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    queue = Queue(queue_name, connection=client, job_class=_job_class(), serializer=JSONSerializer)
    job = queue.fetch_job(job_id)
    if job is None or job.get_status() != JobStatus.QUEUED:
        return False
    client.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 0, job_id)
    queue.enqueue_job(job, at_front=True)
    return True


def recover_abandoned(client: redis.Redis | None, worker_name: str) -> str | None:
    """Hand the job a dead worker (or a worker loop that ended) was running back to its queue (RQ retry rules
    apply); return its id.

    RQ claims a job in two steps (an entry in the started registry, then the job's status
    STARTED); a worker killed between them held a job that never started. RQ's cleanup drops
    such an entry without requeueing the job, so it is put back at the front of its queue here,
    with no retry spent.
    """
    if client is None:
        return None
    from rq.registry import StartedJobRegistry
    from rq.serializers import JSONSerializer
    from rq.worker import Worker

    try:
        dead = Worker.find_by_key(
            Worker.redis_worker_namespace_prefix + worker_name, connection=client, serializer=JSONSerializer
        )
        if dead is None:
            return None
        job_id = dead.get_current_job_id()
        if job_id:
            for queue in dead.queues:
                registry = StartedJobRegistry(
                    queue.name, connection=client, job_class=_job_class(), serializer=JSONSerializer
                )
                entries = [
                    f"{job}:{execution}" for job, execution in registry.get_job_and_execution_ids() if job == job_id
                ]
                if entries:
                    _hand_back(client, registry, queue.name, job_id, entries)
                    logger.warning("job %s of ended worker %s handed back to queue %s", job_id, worker_name, queue.name)
        dead.register_death()
        return job_id
    except redis.exceptions.RedisError as exc:
        logger.warning("could not recover the job of worker %s: %s", worker_name, exc)
        return None


def _job_class() -> type:
    from bookrec.worker.serve.rq_worker import AllowlistedJob

    return AllowlistedJob


def _hand_back(client: redis.Redis, registry, queue_name: str, job_id: str, entries: list[str]) -> None:
    """Requeue one abandoned job: through RQ's cleanup (a try spent) if it had started, else straight back to the front."""
    from rq import Queue
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    queue = Queue(queue_name, connection=client, job_class=_job_class(), serializer=JSONSerializer)
    job = queue.fetch_job(job_id)
    if job is not None and job.get_status() == JobStatus.QUEUED:
        client.zrem(registry.key, *entries)
        queue.enqueue_job(job, at_front=True)
        return
    client.zadd(registry.key, {entry: 1 for entry in entries})  # expired long ago: abandoned now
    registry.cleanup()


def release_swap_slots(client: redis.Redis | None, keys: Keys, count: int, worker_name: str) -> int:
    """Give back the swap slot a dead worker held (it died loading a model), so the others need not wait for it to expire."""
    if client is None:
        return 0
    try:
        released = SwapSlots.of(client, keys, count, worker_name).release_all()
    except redis.exceptions.RedisError as exc:
        logger.warning(
            "supervisor: could not check the swap slots of %s (they expire on their own): %s", worker_name, exc
        )
        return 0
    if released:
        logger.warning("supervisor: gave back the swap slot dead worker %s held", worker_name)
    return released


def _queues(text: str) -> list[str]:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise argparse.ArgumentTypeError(f"queues must be a comma-separated subset of {','.join(QUEUES)}; got {text!r}")
    return queues


def _processes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--processes must be a whole number, got {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"--processes must be from 1 to 64, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The supervisor's flags (`--queues`, `--processes`, `--burst`), for its own entry and `bookrec worker`."""
    parser.add_argument(
        "--queues",
        type=_queues,
        default=list(SERVING_QUEUES),
        metavar="Q1,Q2",
        help="queues in priority order (default: recommend,fresh,refresh; the trainer uses: retrain)",
    )
    parser.add_argument(
        "--processes", type=_processes, default=1, metavar="N", help="worker processes to run (default: 1)"
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit once the queues are empty instead of waiting for jobs"
    )


def run(args: argparse.Namespace) -> int:
    """Run the supervisor with parsed flags until stopped; its exit code."""
    settings = Settings.from_env()
    setup_logging(settings.log_level)
    return Supervisor(
        args.queues,
        args.processes,
        burst=args.burst,
        client=connect(settings),
        keys=Keys(settings.key_prefix),
        swap_slots=settings.swap_slots,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
    ).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bookrec.worker.serve.supervisor`."""
    parser = argparse.ArgumentParser(prog="python -m bookrec.worker.serve.supervisor", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BookrecError as exc:
        print(f"bookrec worker: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
