"""Where jobs run: a local process pool (default) or a Ray cluster. Both run `jobs.run_job`.

Local: `spawn`ed processes (the parent has TVM and torch threads; forking those is unsafe), reused
across jobs so each worker imports the stack once; progress events come back over one queue. A
worker that dies (OOM killer, SIGKILL) breaks a ProcessPoolExecutor: the jobs it had not started are
run again on a fresh pool, the job it was running is reported failed after a second death.

Ray: the same function as a task (one CPU and the estimated memory each); the results come back as
they finish. Where the workers see the parent's registry (a one-machine cluster, NFS; probed with a
marker file) they write the artifact there. Where they do not, each job converts into a private
registry on its worker and returns the artifact's files; the parent writes them into its registry
(staged and renamed, then verified). The sources and the base must then be readable by the workers at
the same paths (or be hf:// ids); such a job reads the whole base (no base artifact to copy from).
"""

from __future__ import annotations

import dataclasses
import os
import queue as _queue
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from personalize_errors import UserError

from .jobs import EventFn, Job, JobResult, run_job

MiB = 2**20
# Measured (bench/batch.py, SmolLM2-135M, 270 MB of bf16 weights): one `add` worker peaks near 450 MiB
# without the gate; the gate adds the float32 reference model and the compiled library's buffers.
WORKER_BASE_BYTES = 250 * MiB
CONVERT_FACTOR = 0.8  # x base weight bytes: one fused group in float32 + the shard writer + page cache of mmaps
GATE_FACTOR = 4.5  # x base weight bytes: float32 reference (2x bf16) + the artifact on its library (bench/batch.py
# --eval measured 3.7 GiB for the tree of 2 SmolLM2 workers and the parent)
RAM_HEADROOM = 0.8  # never plan more than this share of the available memory


class BatchError(UserError):
    """The batch cannot run as asked (executor, cluster, memory)."""


def estimate_worker_bytes(base_weight_bytes: int, evaluate: bool) -> int:
    return int(WORKER_BASE_BYTES + base_weight_bytes * (GATE_FACTOR if evaluate else CONVERT_FACTOR))


def memory_capped_jobs(requested: int | None, per_worker: int, available: int | None = None) -> tuple[int, str]:
    """(workers, why): the requested count (default: CPU count) capped so the workers fit in RAM."""
    import psutil

    available = psutil.virtual_memory().available if available is None else available
    fit = max(1, int(available * RAM_HEADROOM // max(per_worker, 1)))
    wanted = requested or (os.cpu_count() or 1)
    if wanted <= fit:
        return wanted, f"{wanted} worker(s), ~{per_worker / MiB:.0f} MiB each"
    return fit, (f"{fit} worker(s) instead of {wanted}: ~{per_worker / MiB:.0f} MiB each, "
                 f"{available / MiB:.0f} MiB available")


# --------------------------------------------------------------------------------------- local pool
_events_queue = None


def _init_worker(events_queue) -> None:
    global _events_queue
    _events_queue = events_queue
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _pool_job(job: Job) -> JobResult:
    q = _events_queue

    def events(index: int, kind: str, value) -> None:
        if q is not None:
            q.put((index, kind, value))

    events(job.index, "stage", "start")
    return run_job(job, events)


class ProcessExecutor:
    name = "process"

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))

    def describe(self) -> str:
        return f"process pool, {self.workers} worker(s)"

    def run(self, jobs: list[Job], on_event: EventFn, on_result: Callable[[JobResult], None]) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        started: set[int] = set()
        deaths: dict[int, int] = {}
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    index, kind, value = events.get(timeout=0.2)
                except _queue.Empty:
                    continue
                except (EOFError, OSError):
                    return
                if kind == "stage" and value == "start":
                    started.add(index)
                on_event(index, kind, value)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        pending = list(jobs)
        try:
            while pending:
                pending = self._run_pool(ctx, events, pending, started, deaths, on_result)
        finally:
            stop.set()
            drainer.join(timeout=2)

    def _run_pool(self, ctx, events, jobs: list[Job], started: set[int], deaths: dict[int, int],
                  on_result: Callable[[JobResult], None]) -> list[Job]:
        """Run `jobs` on one pool; return the jobs to run again if the pool broke."""
        pool = ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
                                   initargs=(events,))
        futures = {pool.submit(_pool_job, job): job for job in jobs}
        again: list[Job] = []
        try:
            while futures:
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for fut in done:
                    job = futures.pop(fut)
                    try:
                        on_result(fut.result())
                    except BrokenProcessPool:
                        if job.index in started:
                            deaths[job.index] = deaths.get(job.index, 0) + 1
                            started.discard(job.index)
                        if deaths.get(job.index, 0) >= 2:
                            on_result(JobResult(job.index, job.key, job.name, ok=False, stage="worker",
                                                error="error: the worker process died twice running this "
                                                      "variant (out of memory? see dmesg)"))
                        else:
                            again.append(job)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return sorted(again, key=lambda j: j.index)


# --------------------------------------------------------------------------------------- Ray
def _ray_job(job: Job) -> JobResult:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return run_job(job)


def _sees_file(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None, workers: int, per_worker_bytes: int, home: Path, transfer: bool = False):
        self.address = address  # None or "local": start a local cluster in this process
        self.workers = max(1, int(workers))
        self.per_worker_bytes = per_worker_bytes
        self.home = Path(home)
        self.started_here = False
        self.transfer = transfer

    def describe(self) -> str:
        where = "a local cluster" if self.address in (None, "local") else self.address
        return f"Ray ({where}), {self.workers} task(s) at once"

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise BatchError("--ray needs the ray package", hint="pip install 'personalize[ray]'") from None
        if not ray.is_initialized():
            repo_root = str(Path(__file__).resolve().parents[2])
            env = {"OMP_WAIT_POLICY": "PASSIVE",
                   "PYTHONPATH": os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)}
            if self.address in (None, "local"):
                # The local cluster's workers inherit this environment: no runtime_env (setting one up
                # costs a runtime-env agent round trip per worker).
                os.environ.update(env)
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
                self.started_here = True
            else:
                ray.init(address=self.address, log_to_driver=False, runtime_env={"env_vars": env})
        return ray

    def run(self, jobs: list[Job], on_event: EventFn, on_result: Callable[[JobResult], None]) -> None:
        ray = self._connect()
        try:
            if self.transfer or not self._shares_disk(ray):
                self.transfer = True
                jobs = [dataclasses.replace(job, transfer=True) for job in jobs]
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
            if not self.started_here:  # a real cluster schedules by memory as well as by CPU
                task = task.options(memory=self.per_worker_bytes)
            queued = list(jobs)
            running: dict = {}
            while queued or running:
                while queued and len(running) < self.workers:
                    job = queued.pop(0)
                    running[task.remote(job)] = job
                    on_event(job.index, "stage", "start")
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    job = running.pop(ref)
                    try:
                        on_result(ray.get(ref))
                    except ray.exceptions.RayError as exc:  # the worker died: the others go on
                        on_result(JobResult(job.index, job.key, job.name, ok=False, stage="worker",
                                            error=f"error: the Ray task failed: {type(exc).__name__}: "
                                                  f"{str(exc).splitlines()[0] if str(exc) else ''}"))
        finally:
            if self.started_here:
                ray.shutdown()

    def _shares_disk(self, ray) -> bool:
        """Whether a worker sees the parent's registry (then it writes there directly)."""
        token = os.urandom(8).hex()
        marker = self.home / f".batch-probe-{token}"
        marker.write_text(token)
        try:
            return bool(ray.get(ray.remote(num_cpus=0)(_sees_file).remote(str(marker), token)))
        finally:
            marker.unlink(missing_ok=True)
