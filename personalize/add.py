"""The `add` entry point: resolve the source (dir, adapter, hf://), convert, gate, register."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ingest.source import detect_kind

from .pipeline import DEFAULT_QUANTIZATION, AddResult, add_model, default_name

HF_SCHEME = "hf://"


def add_source(source: str, *, quantization: str = DEFAULT_QUANTIZATION, name: str | None = None,
               output: Path | None = None, base: str | None = None, force_base: bool = False,
               conv_template: str | None = None, force: bool = False, evaluate: bool = True,
               device: str = "cpu", progress: Callable[[int, str], None] | None = None,
               progress_total: Callable[[int], None] | None = None,
               log: Callable[[str], None] | None = None, scales: str = "mlc", lib: str | None = None,
               context_window: int | None = None, prefill_chunk: int | None = None) -> AddResult:
    source_record: dict = {}
    if lib is not None:  # size the artifact for that library, and check it against it before it is kept
        context_window, prefill_chunk = _limits_of_library(lib, context_window, prefill_chunk)
    if source.startswith(HF_SCHEME):
        from publish.hub import download_source

        local_dir, revision = download_source(source)
        source_record = {"hub": source[len(HF_SCHEME):].split("@")[0], "revision": revision}
        path = Path(local_dir)
        if name is None and output is None:
            name = default_name(Path(source_record["hub"].split("/")[-1]), quantization, scales)
    else:
        path = Path(source).expanduser()
    kind = detect_kind(path)
    if kind == "adapter":
        from .adapter_pipeline import add_adapter

        return add_adapter(path, quantization=quantization, name=name, output=output, base=base,
                           force_base=force_base, conv_template=conv_template, force=force, evaluate=evaluate,
                           device=device, progress=progress, progress_total=progress_total, log=log,
                           source_record=source_record, scales=scales, lib=lib, context_window=context_window,
                           prefill_chunk=prefill_chunk)
    gate = _gate(evaluate, device, log, reference_dir=path, adapter_dir=None)
    if lib is not None:
        gate = checked_against_library(gate, lib)
    return add_model(path, quantization=quantization, name=name, output=output, conv_template=conv_template,
                     force=force, progress=progress, progress_total=progress_total,
                     source_record=source_record, gate=gate, scales=scales, context_window=context_window,
                     prefill_chunk=prefill_chunk)


def _limits_of_library(lib: str, context_window: int | None, prefill_chunk: int | None) -> tuple[int | None, int | None]:
    """The context MLC runs that library with (its catalog record, else its compiled value) and its chunk."""
    from catalog import find_by_file
    from catalog.library_metadata import local_library, read_library_metadata

    with local_library(lib) as path:
        meta = read_library_metadata(path)
    known = find_by_file(lib)
    ctx = known[0].context_window_size if known else int(meta.get("context_window_size", -1))
    chunk = int(meta.get("prefill_chunk_size", -1))
    return context_window or (ctx if ctx > 0 else None), prefill_chunk or (chunk if chunk > 0 else None)


def checked_against_library(gate, lib: str):
    """Wrap the gate: the staged artifact must fit `lib` (personalize check --lib) or nothing is written."""
    from personalize.check_lib import LibraryMismatchError, check_library

    def run(tmp: Path, lineage: dict):
        result = check_library(tmp, lib)
        lineage["library_check"] = {k: v for k, v in result.to_json().items() if k != "notes"}
        if not result.ok:
            raise LibraryMismatchError(result)
        return gate(tmp, lineage) if gate is not None else None

    return run


def _gate(evaluate: bool, device: str, log, *, reference_dir: Path, adapter_dir: Path | None):
    """The equivalence gate, or None when skipped (--no-eval) or not available."""
    if not evaluate:
        return None
    from .evaluate import make_gate

    return make_gate(reference_dir=reference_dir, adapter_dir=adapter_dir, device=device, log=log)
