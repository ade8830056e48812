"""`personalize batch`: plan (base once, keys, what the delivered log says), fan out, push, report.

The parent is the only writer of the delivered log; workers return results. A variant is pushed
only after its job returned ok (converted, verified, gated); pushes run on two threads of the parent
while the workers convert the next variants.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.store import Registry, pause_point, record_push

from .base import PreparedBase, prepare_base
from .content import source_content_sha256
from .delivered import DeliveredLog, KeyState, delivery_key
from .executors import ProcessExecutor, RayExecutor, estimate_worker_bytes, memory_capped_jobs
from .jobs import Job, JobResult
from .manifest import Manifest, Variant, read_manifest

PUSH_THREADS = 2
FINAL = ("delivered", "skipped", "failed", "interrupted")


@dataclass
class Outcome:
    """One variant's row in the table and the JSON report."""

    index: int
    name: str
    source: str
    quantization: str
    key: str
    status: str = "pending"  # pending | running | delivered | skipped | failed | interrupted
    stage: str | None = None
    error: str | None = None
    path: str | None = None
    size_bytes: int = 0
    eval: dict | None = None
    seconds: float = 0.0
    push_repo: str | None = None
    push: dict | None = None  # {repo_id, url, commit, status: pushed | up-to-date | failed}
    private: bool = False
    mode: str | None = None  # the job's mode, when one ran

    @property
    def ok(self) -> bool:
        return self.status in ("delivered", "skipped") and (self.push_repo is None or
                                                             (self.push or {}).get("status") != "failed")

    def to_json(self) -> dict:
        ev = self.eval or {}
        return {"name": self.name, "source": self.source, "quantization": self.quantization, "key": self.key,
                "status": "failed" if self.status in ("delivered", "skipped") and not self.ok else self.status,
                "stage": self.stage, "error": self.error, "path": self.path, "size_bytes": self.size_bytes,
                "gate": {"mean_kl": ev.get("mean_kl"), "top1_agreement": ev.get("top1_agreement")} if ev else None,
                "seconds": self.seconds, "push": self.push}


@dataclass
class BatchReport:
    manifest: str
    executor: str
    workers_note: str
    base: PreparedBase
    outcomes: list[Outcome]
    wall_s: float = 0.0
    log: str = ""
    outputs: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict:
        return {"manifest": self.manifest, "executor": self.executor, "workers": self.workers_note,
                "base": self.base.to_json(), "wall_s": round(self.wall_s, 3), "log": self.log,
                "interrupted": self.interrupted, "outputs": self.outputs,
                "counts": {s: sum(1 for o in self.outcomes if o.to_json()["status"] == s)
                           for s in ("delivered", "skipped", "failed", "interrupted")},
                "variants": [o.to_json() for o in self.outcomes]}


class NullDisplay:
    """What the runner tells a display (the CLI's rich one); every call is optional."""

    def log(self, message: str) -> None: ...
    def planned(self, outcomes: list[Outcome]) -> None: ...
    def event(self, outcome: Outcome, kind: str, value: Any) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


def run_batch(manifest: Manifest | str | Path, *, jobs: int | None = None, ray: bool = False,
              ray_address: str | None = None, out_dir: Path | None = None, display=None,
              registry: Registry | None = None, transfer: bool = False) -> BatchReport:
    """Deliver every variant of the manifest (see the module doc). `transfer`: Ray workers return the
    artifacts as files instead of writing into the registry (forced; otherwise only without a shared disk)."""
    t0 = time.perf_counter()
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    display = display or NullDisplay()
    registry = registry or Registry()
    registry.home.mkdir(parents=True, exist_ok=True)
    log = DeliveredLog(registry.home)

    gate_quants = {v.quantization for v in manifest.variants if v.evaluate}
    base = prepare_base(manifest, registry, gate_quantizations=gate_quants, log=display.log)
    outcomes, job_list = plan(manifest, base, registry, log)
    display.planned(outcomes)

    base_bytes = _weight_bytes(base.model_dir)
    per_worker = estimate_worker_bytes(base_bytes, evaluate=bool(gate_quants))
    workers, note = memory_capped_jobs(jobs, per_worker)
    workers = min(workers, max(1, len(job_list)))
    executor = (RayExecutor(ray_address, workers, per_worker, registry.home, transfer=transfer) if ray
                else ProcessExecutor(workers))
    report = BatchReport(str(manifest.path), executor.describe(), note, base, outcomes, log=str(log.path))
    by_index = {o.index: o for o in outcomes}
    variants = {o.index: v for o, v in zip(outcomes, manifest.variants)}
    states = log.states()
    pushes = ThreadPoolExecutor(PUSH_THREADS)
    push_futures = []

    def push_later(outcome: Outcome) -> None:
        if outcome.push_repo:
            push_futures.append(pushes.submit(_push, outcome, registry, log, states.get((outcome.key, outcome.name)),
                                              display))
        else:
            display.finished(outcome)

    for o in outcomes:
        if o.status == "skipped":
            push_later(o)

    def on_event(index: int, kind: str, value: Any) -> None:
        o = by_index[index]
        with status_lock:
            if o.status in FINAL:
                return  # the worker's progress queue may trail its result
            if kind == "stage":
                o.status = "running"
                o.stage = None if value == "start" else value
        display.event(o, kind, value)

    delivered = [0]
    status_lock = threading.Lock()

    def on_result(result: JobResult) -> None:
        o = by_index[result.index]
        if result.files is not None:  # a worker without the registry's disk sent the artifact back
            from .jobs import materialize

            materialize(result, registry, overwrite=manifest.force or o.mode == "adopt")
        with status_lock:
            _apply(o, result)
        if result.ok:
            log.append("delivered", o.key, name=o.name, path=o.path, size_bytes=o.size_bytes, eval=o.eval,
                       seconds=o.seconds, source=o.source, quantization=o.quantization,
                       reused_params=result.reused_params, worker=result.worker)
            delivered[0] += 1
            pause_point(f"batch-delivered-{delivered[0]}")  # tests only: kill the batch at a known point
            push_later(o)
        else:
            log.append("failed", o.key, name=o.name, stage=o.stage, error=o.error, source=o.source,
                       quantization=o.quantization, worker=result.worker)
            display.finished(o)

    try:
        for job in job_list:
            log.append("started", job.key, name=job.name, mode=job.mode, source=variants[job.index].source,
                       quantization=job.quantization, executor=executor.name)
        if job_list:
            executor.run(job_list, on_event, on_result)
        for fut in push_futures:
            fut.result()
    except KeyboardInterrupt:
        report.interrupted = True
        for o in outcomes:
            if o.status in ("pending", "running"):
                o.status, o.error = "interrupted", "interrupted: run the batch again to finish it"
        pushes.shutdown(wait=False, cancel_futures=True)
    else:
        pushes.shutdown(wait=True)
    report.outputs = write_outputs(manifest, outcomes, registry, out_dir)
    report.wall_s = time.perf_counter() - t0
    return report


def plan(manifest: Manifest, base: PreparedBase, registry: Registry, log: DeliveredLog) -> tuple[list[Outcome], list[Job]]:
    """One Outcome per variant; a Job for each that is not delivered yet (skipped ones may still push)."""
    from personalize.add import default_name

    states = log.states()
    outcomes, jobs = [], []
    for index, v in enumerate(manifest.variants):
        local, hub_source = _local_source(v)
        art = base.artifacts[v.quantization]
        name = v.name or default_name(Path(v.source.split("@")[0].split("/")[-1]) if v.is_hub else Path(local),
                                      v.quantization, manifest.scales)
        options = {"scales": manifest.scales, "conv_template": v.conv_template}
        key = delivery_key(art.content_sha256, source_content_sha256(local), v.quantization, options)
        push = v.push.format(name=name, quantization=v.quantization, source=Path(local).name) if v.push else None
        o = Outcome(index, name, v.source, v.quantization, key, push_repo=push, private=v.private)
        outcomes.append(o)
        st = states.get((key, name), KeyState())
        exists = (registry.path(name) / "personalize.json").is_file()
        if st.status == "delivered" and st.name == name and exists and (st.last.get("eval") or not v.evaluate):
            o.status, o.path = "skipped", str(registry.path(name))
            o.size_bytes, o.eval = st.last.get("size_bytes", 0), st.last.get("eval")
            continue
        mode = "adopt" if exists and (name in st.started_names or st.name == name) else "convert"
        jobs.append(Job(index=index, key=key, source=hub_source or local, name=name, quantization=v.quantization,
                        home=str(registry.home), base=str(base.model_dir), mode=mode, evaluate=v.evaluate,
                        scales=manifest.scales, device=manifest.device, conv_template=v.conv_template,
                        force=manifest.force, force_base=manifest.force_base, prebuilt=art.catalog or None,
                        context_window=art.context_window, prefill_chunk=art.prefill_chunk))
        o.mode = mode
    return outcomes, jobs


def _local_source(v: Variant) -> tuple[str, str | None]:
    """(local directory to hash, the pinned hf:// spec the worker converts) for a hub source."""
    if not v.is_hub:
        return v.source, None
    from ingest.hub import download_source

    local, commit = download_source(v.source)
    repo = v.source[len("hf://"):].split("@")[0]
    return str(local), f"hf://{repo}@{commit}"


def _apply(o: Outcome, r: JobResult) -> None:
    o.status = "delivered" if r.ok else "failed"
    o.stage, o.error, o.path = r.stage, r.error, r.path
    o.size_bytes, o.eval, o.seconds = r.size_bytes, r.eval, r.seconds


def _push(o: Outcome, registry: Registry, log: DeliveredLog, state: KeyState | None, display) -> None:
    """Push a delivered variant unless the same artifact is already there (per the log); never raises."""
    from personalize_errors import UserError
    from publish.hub import push_artifact

    path = Path(o.path or registry.path(o.name))
    artifact_sha = hashlib.sha256((path / "personalize.json").read_bytes()).hexdigest()
    done = (state.pushed.get(o.push_repo) if state else None) or {}
    if done.get("artifact_sha256") == artifact_sha:
        o.push = {**done, "status": "up-to-date"}
        display.finished(o)
        return
    display.event(o, "stage", "push")
    try:
        result = push_artifact(path, o.push_repo, private=o.private, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except (UserError, OSError) as exc:
        o.push = {"repo_id": o.push_repo, "status": "failed",
                  "error": exc.one_line() if isinstance(exc, UserError) else f"error: {exc}"}
        o.stage, o.error = "push", o.push["error"]
        log.append("failed", o.key, name=o.name, stage="push", error=o.push["error"], repo_id=o.push_repo)
        display.finished(o)
        return
    record_push(registry.home, o.name, result.record())
    o.push = {"repo_id": result.repo_id, "url": result.url, "commit": result.head, "status": "pushed",
              "artifact_sha256": artifact_sha}
    log.append("pushed", o.key, name=o.name, push=o.push)
    display.finished(o)


def _weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).iterdir()
               if p.suffix in (".safetensors", ".bin") and p.is_file())


def write_outputs(manifest: Manifest, outcomes: list[Outcome], registry: Registry, out_dir: Path | None) -> dict:
    from .outputs import write_app_files

    good = [o for o in outcomes if o.status in ("delivered", "skipped") and o.path]
    out_dir = Path(out_dir) if out_dir else manifest.path.parent / f"{manifest.path.stem}.batch"
    return write_app_files(good, registry, out_dir, device=manifest.package_device)
