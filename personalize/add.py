"""`personalize add`: the one pipeline for full fine-tunes and adapters.

source (dir, adapter, hf://) -> prepare (plan + the kind's steps) -> stage: chat config on a side
thread while the weights stream (reuse | read -> merge -> quantize -> shards) -> lineage -> gate ->
card + hashes -> rename into place. A failing step, the gate included, leaves nothing behind.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from artifacts.chat_config import build_chat_config
from ingest.source import detect_kind, open_model_dir
from registry.store import Registry, check_name, staged_directory

from .finalize import build_lineage, finalize_artifact, write_chat_files
from .pipeline import DEFAULT_QUANTIZATION, PreparedSource, ProgressFn, StageTimer, plan_conversion, write_weights

HF_SCHEME = "hf://"

# The gate: (staged artifact dir, lineage) -> the numbers recorded as lineage["eval"].
GateFn = Callable[[Path, dict], "dict | None"]


@dataclass(frozen=True)
class AddOptions:
    """What the user asked for, independent of the source kind."""

    quantization: str = DEFAULT_QUANTIZATION
    scales: str = "mlc"
    name: str | None = None
    output: Path | None = None
    conv_template: str | None = None
    force: bool = False
    evaluate: bool = True
    device: str = "cpu"
    base: str | None = None  # adapters: the base model (registry name or HF dir)
    force_base: bool = False
    calibrate: str | None = None  # "builtin" or a text file: calibrated rounding (personalize/calibration.py)
    lib: str | None = None  # a compiled MLC library the artifact must fit (file or URL): checked before kept
    context_window: int | None = None  # default: the fitting prebuilt library's (personalize/prebuilt.py)
    prefill_chunk: int | None = None


@dataclass
class AddResult:
    name: str | None
    path: Path
    lineage: dict[str, Any]


def add_source(source: str | Path, *, quantization: str = DEFAULT_QUANTIZATION, name: str | None = None,
               output: Path | None = None, base: str | None = None, force_base: bool = False,
               conv_template: str | None = None, force: bool = False, evaluate: bool = True,
               device: str = "cpu", progress: ProgressFn | None = None,
               progress_total: Callable[[int], None] | None = None,
               log: Callable[[str], None] | None = None, scales: str = "mlc",
               registry: Registry | None = None, lib: str | None = None, context_window: int | None = None,
               prefill_chunk: int | None = None,
               calibrate: str | None = None) -> AddResult:
    """Convert a full HF model dir, a PEFT adapter dir or an hf:// repo into an artifact (in the
    registry, or at `output`)."""
    registry = registry or Registry()
    path, source_record = _local_source(str(source))
    if source_record and name is None and output is None:
        name = default_name(Path(source_record["hub"].split("/")[-1]), quantization, scales)
    if lib is not None:  # size the artifact for that library (it is checked against it before it is kept)
        context_window, prefill_chunk = limits_of_library(lib, context_window, prefill_chunk)
    options = AddOptions(quantization=quantization, scales=scales, name=name, output=output,
                         conv_template=conv_template, force=force, evaluate=evaluate, device=device, base=base,
                         force_base=force_base, lib=lib, context_window=context_window, prefill_chunk=prefill_chunk,
                         calibrate=calibrate)
    t_start = time.perf_counter()
    if detect_kind(path) == "adapter":
        from .adapter_steps import adapter_source

        prepared = adapter_source(path, options, registry, log=log)
    else:
        prepared = model_source(path, options)
    if calibrate is not None:  # one hook: codes made before the write loop, replacing its rounding
        from .calibration import calibrate_prepared

        prepared, options, _ = calibrate_prepared(prepared, options, log=log)
    return convert(prepared, options, registry=registry, gate=build_gate(prepared, options, log),
                   progress=progress, progress_total=progress_total, source_record=source_record, t_start=t_start)


def _local_source(source: str) -> tuple[Path, dict]:
    """(local directory, lineage source record): an hf:// repo is downloaded (cached) first."""
    if not source.startswith(HF_SCHEME):
        return Path(source).expanduser(), {}
    from ingest.hub import download_source

    local_dir, revision = download_source(source)
    return Path(local_dir), {"hub": source[len(HF_SCHEME):].split("@")[0], "revision": revision}


def model_source(path: Path, options: AddOptions) -> PreparedSource:
    """A full fine-tune: its own weights stream; no merge, nothing to reuse."""
    model = open_model_dir(Path(path))
    plan = plan_conversion(model, options.quantization, scales=options.scales,
                           context_window=options.context_window, prefill_chunk=options.prefill_chunk)

    def annotate(lineage: dict, weights: dict) -> None:
        lineage["source"]["content_sha256"] = weights["source_content_sha256"]

    return PreparedSource(kind="model", path=model.path, plan=plan, annotate_lineage=annotate,
                          reference_dir=model.path)


def build_gate(prepared: PreparedSource, options: AddOptions, log=None) -> GateFn | None:
    """The equivalence gate for any source kind (None when skipped: --no-eval), after `--lib`'s check."""
    gate = None
    if options.evaluate:
        from .evaluate import make_gate

        gate = make_gate(reference_dir=prepared.reference_dir, adapter_dir=prepared.adapter_dir,
                         device=options.device, log=log)
    return checked_against_library(gate, options.lib) if options.lib is not None else gate


def limits_of_library(lib: str, context_window: int | None, prefill_chunk: int | None) -> tuple[int | None, int | None]:
    """The context MLC runs that library with (its catalog record, else its compiled value) and its chunk."""
    from catalog import find_by_file
    from catalog.library_metadata import local_library, read_library_metadata

    with local_library(lib) as path:
        meta = read_library_metadata(path)
    known = find_by_file(lib)
    ctx = known[0].context_window_size if known else int(meta.get("context_window_size", -1))
    chunk = int(meta.get("prefill_chunk_size", -1))
    return context_window or (ctx if ctx > 0 else None), prefill_chunk or (chunk if chunk > 0 else None)


def checked_against_library(gate: GateFn | None, lib: str) -> GateFn:
    """The staged artifact must fit `lib` (as `personalize check --lib`) or nothing is written."""
    from .check_lib import LibraryMismatchError, check_library

    def run(tmp: Path, lineage: dict):
        result = check_library(tmp, lib)
        lineage["library_check"] = {k: v for k, v in result.to_json().items() if k != "notes"}
        if not result.ok:
            raise LibraryMismatchError(result)
        return gate(tmp, lineage) if gate is not None else None

    return run


def convert(prepared: PreparedSource, options: AddOptions, *, registry: Registry, gate: GateFn | None = None,
            progress: ProgressFn | None = None, progress_total: Callable[[int], None] | None = None,
            source_record: dict | None = None, t_start: float | None = None) -> AddResult:
    """The steps every source kind runs, into a staged directory renamed into place at the end."""
    t_start = time.perf_counter() if t_start is None else t_start
    plan = prepared.plan
    name, destination = resolve_destination(registry, options.name, options.output, prepared.path,
                                            options.quantization, options.scales)
    if progress_total:
        progress_total(plan.source_bytes)
    timer = StageTimer()
    with staged_directory(destination, options.force) as tmp, tempfile.TemporaryDirectory() as scratch, \
            side_thread() as pool:
        chat_dir = prepared.tokenizer_dir(Path(scratch)) if prepared.tokenizer_dir else plan.model.path
        # The chat config needs transformers' tokenizer (seconds of imports): build it meanwhile.
        chat = pool.submit(build_chat_config, model_type=plan.config.model_type, quantization=plan.quantization,
                           model_config=plan.config.model_config, source_dir=chat_dir,
                           conv_template=options.conv_template)
        weights = write_weights(plan, tmp, timer, progress, prepared.weight_steps)
        with timer.time("write"):
            write_chat_files(tmp, chat.result())
        lineage = build_lineage(plan.model, name=name, source_kind=prepared.kind, source_path=prepared.path,
                                model_type=plan.config.model_type, quantization=plan.quantization,
                                scales=plan.scales, library_key=plan.library_key,
                                compiled_config=plan.config.compiled, source_record=source_record)
        lineage["prebuilt_library"] = plan.prebuilt
        if prepared.annotate_lineage:
            prepared.annotate_lineage(lineage, weights)
        gate_and_finalize(tmp, lineage, weights, timer, t_start, gate)
    return AddResult(name if options.output is None else None, destination, lineage)


def gate_and_finalize(tmp: Path, lineage: dict, weights: dict, timer: StageTimer,
                      t_start: float, gate: GateFn | None) -> None:
    """Timings, the equivalence gate on the staged artifact (a failure writes nothing), card, hashes."""
    lineage["timings"] = {k: round(v, 4) for k, v in timer.seconds.items()}
    if gate is not None:
        t_eval = time.perf_counter()
        lineage["eval"] = gate(tmp, lineage)
        lineage["timings"]["eval"] = round(time.perf_counter() - t_eval, 4)
    lineage["timings"]["total"] = round(time.perf_counter() - t_start, 4)
    finalize_artifact(tmp, lineage, weights["shard_hashes"])


def side_thread() -> ThreadPoolExecutor:
    """One worker thread for the side job (transformers' tokenizer and chat template: seconds of
    imports) that runs while the weights stream. A spawned process would avoid the GIL but pay a
    fresh interpreter and torch import, which costs more than it saves."""
    return ThreadPoolExecutor(1)


def resolve_destination(registry: Registry, name: str | None, output: Path | None, source: Path,
                        quantization: str, scales: str) -> tuple[str | None, Path]:
    """(registry name, directory): --output wins; else the registry under --name or a default name."""
    if output is not None:
        return name, Path(output)
    name = check_name(name or default_name(source, quantization, scales))
    return name, registry.path(name)


def default_name(source: Path, quantization: str, scales: str = "mlc") -> str:
    stem = Path(source).resolve().name or "model"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.") or "model"
    return f"{safe}-{quantization}" + ("" if scales == "mlc" else f"-{scales}")
