"""One variant's work, the same function on a local process or a Ray worker: convert (the one add
pipeline) or adopt an artifact an interrupted run already wrote, then verify; the gate runs inside
the conversion. Pushing is the parent's job (it holds the Hub token), after this one succeeded.

A job never raises for a variant's own failure: it returns the stage and the one-line error, so one
broken adapter cannot stop the others. Only Ctrl-C propagates.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

# Called as events(index, kind, value): ("stage", "convert"), ("total", bytes), ("advance", bytes).
EventFn = Callable[[int, str, object], None]


@dataclass(frozen=True)
class Job:
    index: int
    key: str
    source: str  # local dir, or hf://ORG/NAME@<commit> pinned to the revision the parent hashed
    name: str
    quantization: str
    home: str  # the registry the artifact goes to (the parent's, on a shared disk)
    base: str | None = None  # the base model dir, for adapters (full fine-tunes ignore it)
    mode: str = "convert"  # convert | adopt (an artifact this key's interrupted job already wrote)
    evaluate: bool = True
    scales: str = "mlc"
    device: str = "cpu"
    conv_template: str | None = None
    force: bool = False
    force_base: bool = False
    # No shared disk (a Ray cluster whose workers cannot see `home`): convert into a private registry on
    # the worker and return the artifact's files; the parent writes them into its registry and verifies.
    transfer: bool = False
    # The library catalog's answer for this base and quantization, resolved once by the parent
    # (personalize/batch/base.py consult_catalog); handed to the add pipeline when it takes one.
    prebuilt: dict | None = None
    # The base artifact's context window and prefill chunk (as the catalog sized it): every variant gets
    # the same, so all run on the base's one library.
    context_window: int | None = None
    prefill_chunk: int | None = None


@dataclass
class JobResult:
    index: int
    key: str
    name: str
    ok: bool
    stage: str  # the last stage reached: convert | adopt | verify | gate
    error: str | None = None
    path: str | None = None
    size_bytes: int = 0
    eval: dict | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    reused_params: int | None = None
    worker: str = ""
    files: dict[str, bytes] | None = None  # transfer jobs: the artifact, relative path -> bytes

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.pop("files", None)
        return doc


def run_job(job: Job, events: EventFn | None = None) -> JobResult:
    if not job.transfer:
        return _run(job, events)
    import dataclasses
    import shutil
    import tempfile

    private = tempfile.mkdtemp(prefix="personalize-batch-")
    try:
        result = _run(dataclasses.replace(job, home=private, mode="convert"), events)
        if result.ok:
            root = Path(result.path)
            result.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                            if p.is_file()}
            result.path = None
        return result
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(job: Job, events: EventFn | None = None) -> JobResult:
    os.environ["PERSONALIZE_HOME"] = job.home  # the library cache and the runtime read the default registry
    from personalize_errors import UserError
    from registry.store import Registry

    say = events or (lambda *_: None)
    t0 = time.perf_counter()
    result = JobResult(job.index, job.key, job.name, ok=False, stage=job.mode,
                       worker=f"{os.uname().nodename}:{os.getpid()}")
    registry = Registry(job.home)
    try:
        path = None
        if job.mode == "adopt":
            say(job.index, "stage", "adopt")
            path = _adopt(job, registry, result)
        if path is None:
            result.stage = "convert"
            say(job.index, "stage", "convert")
            path = _convert(job, registry, say, force=job.force or job.mode == "adopt")
        result.stage = "verify"
        say(job.index, "stage", "verify")
        _verify(path)
        lineage = _lineage(path)
        if job.evaluate and not lineage.get("eval"):  # adopted from a run with the gate off
            result.stage = "gate"
            say(job.index, "stage", "gate")
            from personalize.evaluate import reevaluate

            reevaluate(path, device=job.device)
            lineage = _lineage(path)
        result.ok, result.path = True, str(path)
        result.size_bytes = sum(int(f.get("size", 0)) for f in lineage.get("files", {}).values())
        result.eval = lineage.get("eval")
        result.timings = lineage.get("timings") or {}
        result.reused_params = (lineage.get("base") or {}).get("reused_params")
    except UserError as exc:
        result.error = exc.one_line()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug: keep the cause, still let the other variants run
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        result.error = f"internal error: {type(exc).__name__}: {exc} | {''.join(tb[-3:]).strip()}"
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _convert(job: Job, registry, say: EventFn, force: bool) -> Path:
    import inspect

    from personalize.add import add_source

    accepted = inspect.signature(add_source).parameters
    extra = {k: getattr(job, k) for k in ("context_window", "prefill_chunk") if k in accepted and getattr(job, k)}
    result = add_source(job.source, quantization=job.quantization, name=job.name, base=job.base,
                        force_base=job.force_base, conv_template=job.conv_template, force=force,
                        evaluate=job.evaluate, device=job.device, scales=job.scales, registry=registry,
                        progress=lambda n, what="": say(job.index, "advance", n),
                        progress_total=lambda total: say(job.index, "total", total), **extra)
    return result.path


def _adopt(job: Job, registry, result: JobResult) -> Path | None:
    """The artifact this key's earlier job wrote (it was killed before the log said so), if it is intact."""
    from artifacts.verify import verify_artifact

    path = registry.path(job.name)
    if not (path / "personalize.json").is_file():
        return None
    lineage = _lineage(path)
    source = lineage.get("source") or {}
    same_source = job.source.startswith("hf://") or source.get("path") == str(Path(job.source).resolve())
    if not same_source or lineage.get("quantization") != job.quantization or verify_artifact(path):
        return None
    return path


def _verify(path: Path) -> None:
    from artifacts.verify import verify_artifact
    from personalize_errors import UserError

    problems = verify_artifact(path)
    if problems:
        raise UserError(f"verify failed: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                                           else ""), path=str(path),
                        hint="the artifact changed after it was written; run the batch again to rewrite it")


def _lineage(path: Path) -> dict:
    from artifacts import Artifact

    return Artifact(path).lineage


def materialize(result: JobResult, registry, overwrite: bool = False) -> None:
    """A transfer job's files, written into `registry` under its name (staged, renamed) and verified here."""
    from personalize_errors import UserError
    from registry.store import staged_directory

    destination = registry.path(result.name)
    try:
        with staged_directory(destination, overwrite, home=registry.home) as tmp:
            for rel, data in (result.files or {}).items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            _verify(tmp)
    except UserError as exc:
        result.ok, result.stage, result.error = False, "transfer", exc.one_line()
        return
    finally:
        result.files = None
    result.path = str(destination)
