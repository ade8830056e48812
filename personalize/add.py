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
               log: Callable[[str], None] | None = None, scales: str = "mlc",
               calibrate: str | None = None) -> AddResult:
    source_record: dict = {}
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
                           source_record=source_record, scales=scales, calibrate=calibrate)
    gate = _gate(evaluate, device, log, reference_dir=path, adapter_dir=None)
    return add_model(path, quantization=quantization, name=name, output=output, conv_template=conv_template,
                     force=force, progress=progress, progress_total=progress_total,
                     source_record=source_record, gate=gate, scales=scales, calibrate=calibrate, log=log)


def _gate(evaluate: bool, device: str, log, *, reference_dir: Path, adapter_dir: Path | None):
    """The equivalence gate, or None when skipped (--no-eval) or not available."""
    if not evaluate:
        return None
    from .evaluate import make_gate

    return make_gate(reference_dir=reference_dir, adapter_dir=adapter_dir, device=device, log=log)
