"""`personalize add`: ingest -> (merge) -> quantize -> write, into a temp dir renamed into place.

The stages stream: one library parameter (its few HF source tensors) is in memory at a time, and
each finished tensor goes straight into the shard writer.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from artifacts.chat_config import build_chat_config, write_chat_config
from artifacts.lineage import write_lineage
from artifacts.tensor_cache import TensorCacheWriter
from ingest.errors import IngestError
from ingest.source import ModelDir, config_sha256, open_model_dir
from quantize import NonFiniteWeightError, check_scale_mode, get_scheme, library_params, quantize_param
from quantize.spec import SourceParam
from registry.store import Registry, check_name, staged_directory

from .arch import Architecture, LibraryConfig, get_architecture, library_key
from .ordering import counted_source_params, loading_order
from .prebuilt import fit_prebuilt
from .versions import tool_versions

DEFAULT_QUANTIZATION = "q4f16_1"

# Called as progress(bytes_done_delta, description) while converting.
ProgressFn = Callable[[int, str], None]


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "merge": 0.0, "quantize": 0.0,
                                                               "write": 0.0})

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


@dataclass
class ConversionPlan:
    """Everything decided before a weight byte is read: arch, config, parameter lists, order."""

    model: ModelDir
    arch: Architecture
    config: LibraryConfig
    quantization: str
    params: list[SourceParam]
    order: list[SourceParam]
    scales: str = "mlc"  # per-group scales: "mlc" (bit-exact) or a searched mode (quantize/search.py)
    prebuilt: dict | None = None  # MLC's prebuilt library that fits (personalize/prebuilt.py), for lineage

    @property
    def library_key(self) -> str:
        return library_key(self.config, self.quantization)

    @property
    def source_bytes(self) -> int:
        infos = self.model.weights.tensors
        return sum(infos[s].nbytes for p in self.order for s in p.sources)


def plan_conversion(model: ModelDir, quantization: str, config_override: dict | None = None,
                    shape_overrides: dict[str, tuple[int, ...]] | None = None, scales: str = "mlc",
                    context_window: int | None = None, prefill_chunk: int | None = None) -> ConversionPlan:
    scheme = get_scheme(quantization)
    check_scale_mode(scales)
    hf_config = dict(model.config)
    if config_override:
        hf_config.update(config_override)
    arch = get_architecture(hf_config.get("model_type"), path=str(model.config_path))
    config = arch.library_config(hf_config, path=str(model.config_path))
    config, prebuilt = fit_prebuilt(config, scheme.name, context_window=context_window, prefill_chunk=prefill_chunk)
    params = arch.source_params(config)
    check_sources(model, params, shape_overrides or {})
    library_params(params, scheme)  # raises early if the scheme cannot express a parameter
    order = loading_order(params, model.weights.file_order)
    return ConversionPlan(model, arch, config, scheme.name, params, order, scales=scales, prebuilt=prebuilt)


def check_sources(model: ModelDir, params: list[SourceParam],
                  shape_overrides: dict[str, tuple[int, ...]] | None = None) -> None:
    """Every source tensor exists, is a float, and has the shape the architecture expects.

    `shape_overrides` gives the shape a tensor will have after an adapter replaced it (resized vocab).
    """
    shape_overrides = shape_overrides or {}
    infos = model.weights.tensors
    for param in params:
        for i, source in enumerate(param.sources):
            info = infos.get(source)
            if info is None:
                where = model.weights.index or model.weights.files[0]
                raise IngestError(f"tensor {source} is missing from the weights", path=where,
                                  hint="the checkpoint does not match config.json; re-save the model")
            if info.dtype.kind not in "fV" or info.dtype.itemsize not in (2, 4):
                raise IngestError(f"tensor {source} has dtype {info.dtype}, expected float32/float16/bfloat16",
                                  path=info.file, hint="save the model in float32, float16 or bfloat16")
            shape = tuple(shape_overrides.get(source, info.shape))
            expected = param.expected_source_shape(i)
            if shape != expected:
                raise IngestError(f"tensor {source} has shape {list(shape)}, config.json implies {list(expected)}",
                                  path=info.file, hint="the weights do not match config.json; use the matching "
                                  "config or re-save the model")


# A merge step: (hf_name, base array) -> array (the adapter merge plugs in here).
MergeFn = Callable[[str, np.ndarray], np.ndarray]


# Reuse step: a parameter's finished library tensors taken from another artifact, or None.
ReuseFn = Callable[[SourceParam], "list[tuple[str, np.ndarray]] | None"]


def write_weights(plan: ConversionPlan, out_dir: Path, timer: StageTimer, progress: ProgressFn | None = None,
                  merge: MergeFn | None = None, reuse: ReuseFn | None = None,
                  merge_targets: set[str] | None = None) -> dict:
    """Stream every parameter through read -> merge -> quantize -> shard writer. Returns the cache doc.

    Also hashes the source tensors as they stream by (name, shape, dtype, bytes): the content hash
    that pins a base model without a second pass over its files.
    """
    scheme = get_scheme(plan.quantization)
    writer = TensorCacheWriter(out_dir)
    infos = plan.model.weights.tensors
    tensor_digests: dict[str, str] = {}
    reused = 0
    out_bytes = 0
    for param in plan.order:
        outputs = reuse(param) if reuse is not None else None
        if outputs is not None:
            reused += 1
        elif len(param.sources) == 1 and infos[param.sources[0]].nbytes > ROW_CHUNK_BYTES \
                and (merge is None or (merge_targets is not None and param.sources[0] not in merge_targets)):
            outputs = quantize_in_row_blocks(plan, param, scheme, timer, tensor_digests)
        else:
            with timer.time("read"):
                arrays = plan.model.weights.read(list(param.sources))
                for source, array in zip(param.sources, arrays):
                    tensor_digests[source] = tensor_digest(array)
            if merge is not None:
                with timer.time("merge"):
                    arrays = [merge(name, arr) for name, arr in zip(param.sources, arrays)]
            with timer.time("quantize"):
                weight = arrays[0] if len(arrays) == 1 else _concat_rows(arrays)
                del arrays
                outputs = quantize_checked(param, weight, scheme, infos, scales=plan.scales)
                del weight
        with timer.time("write"):
            for name, array in outputs:
                writer.add(name, array)
                out_bytes += array.nbytes
        if progress:
            progress(sum(infos[s].nbytes for s in param.sources), param.name)
    sizes = {n: int(np.prod(i.shape, dtype=np.int64)) for n, i in infos.items()}
    total_params = counted_source_params(plan.order, plan.model.weights.file_order, sizes,
                                         plan.arch.unused_hf_names(plan.config))
    metadata = {"ParamSize": len(library_params(plan.params, scheme)), "ParamBytes": float(out_bytes),
                "BitsPerParam": out_bytes * 8.0 / max(total_params, 1)}
    with timer.time("write"):
        doc = writer.finish(metadata)
    return {"doc": doc, "shard_hashes": dict(writer.file_hashes), "reused_params": reused,
            "source_content_sha256": combine_digests(tensor_digests) if reused == 0 else None}


# A single tensor bigger than this (an embedding, an untied lm_head) is read and quantized in row
# blocks: group quantization is row-independent, so the result is identical and the source tensor
# is never in memory whole (the 128256x2048 embedding of Llama-3.2-1B is 501 MiB in bf16).
ROW_CHUNK_BYTES = 64 * 2**20


def quantize_checked(param: SourceParam, weight: np.ndarray, scheme, infos,
                     scales: str = "mlc") -> list[tuple[str, np.ndarray]]:
    try:
        return quantize_param(param, weight, scheme, scales=scales)
    except NonFiniteWeightError as exc:  # NaN/Inf in the source, or too large for the model dtype
        files = sorted({str(infos[s].file) for s in param.sources})
        raise IngestError(str(exc), path=files[0], hint=exc.hint) from exc


def quantize_in_row_blocks(plan: ConversionPlan, param: SourceParam, scheme, timer: StageTimer,
                           tensor_digests: dict[str, str]) -> list[tuple[str, np.ndarray]]:
    """Read, hash and quantize one large tensor a block of rows at a time into preallocated outputs."""
    (source,) = param.sources
    info = plan.model.weights.tensors[source]
    rows = info.shape[0]
    row_bytes = max(1, info.nbytes // max(rows, 1))
    step = max(1, ROW_CHUNK_BYTES // 4 // row_bytes)
    axis = 1 if scheme.transposes(param.role) else 0  # KN layouts put the rows on axis 1
    digest = hashlib.sha256(f"{list(info.shape)}|{info.dtype}|".encode())
    outputs: list[tuple[str, np.ndarray]] = []
    for start in range(0, rows, step):
        with timer.time("read"):
            block = plan.model.weights.read_rows(source, start, start + step)
            digest.update(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
        with timer.time("quantize"):
            part = SourceParam(param.name, (block.shape[0],) + tuple(param.shape[1:]), param.sources, param.role)
            pieces = quantize_checked(part, block, scheme, plan.model.weights.tensors, scales=plan.scales)
            if not outputs:
                outputs = [(name, np.empty(_full_shape(arr.shape, axis, rows), arr.dtype)) for name, arr in pieces]
            for (_, full), (_, arr) in zip(outputs, pieces):
                index = [slice(None)] * arr.ndim
                index[axis if arr.ndim > 1 else 0] = slice(start, start + block.shape[0])
                full[tuple(index)] = arr
    tensor_digests[source] = digest.hexdigest()
    return outputs


def _full_shape(shape: tuple[int, ...], axis: int, rows: int) -> tuple[int, ...]:
    out = list(shape)
    out[axis if len(shape) > 1 else 0] = rows
    return tuple(out)


def tensor_digest(array: np.ndarray) -> str:
    h = hashlib.sha256(f"{list(array.shape)}|{array.dtype}|".encode())
    h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return h.hexdigest()


def combine_digests(digests: dict[str, str]) -> str:
    """Content hash of a set of tensors: independent of file layout, sharding and format."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}:{digests[name]}\n".encode())
    return h.hexdigest()


def _concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:  # mixed source dtypes: concatenate in float32 (exact for every float input)
        arrays = [a.astype(np.float32) for a in arrays]
    return np.concatenate(arrays, axis=0)


@dataclass
class AddResult:
    name: str | None
    path: Path
    lineage: dict[str, Any]


def add_model(source: Path | str, *, quantization: str = DEFAULT_QUANTIZATION, name: str | None = None,
              output: Path | None = None, conv_template: str | None = None, force: bool = False,
              registry: Registry | None = None, progress: ProgressFn | None = None,
              progress_total: Callable[[int], None] | None = None,
              source_record: dict | None = None,
              gate: Callable[[Path, dict], dict | None] | None = None, scales: str = "mlc",
              context_window: int | None = None, prefill_chunk: int | None = None) -> AddResult:
    """Convert a full HF model directory into an artifact (in the registry, or at `output`)."""
    t_start = time.perf_counter()
    registry = registry or Registry()
    model = open_model_dir(Path(source))
    plan = plan_conversion(model, quantization, scales=scales, context_window=context_window,
                           prefill_chunk=prefill_chunk)
    name, destination = resolve_destination(registry, name, output, model.path, quantization, scales)
    if progress_total:
        progress_total(plan.source_bytes)
    timer = StageTimer()
    with staged_directory(destination, force) as tmp, side_process() as pool:
        # The chat config needs transformers' tokenizer (seconds of imports): build it meanwhile.
        chat = pool.submit(build_chat_config, model_type=plan.config.model_type, quantization=plan.quantization,
                           model_config=plan.config.model_config, source_dir=model.path,
                           conv_template=conv_template)
        weights = write_weights(plan, tmp, timer, progress)
        with timer.time("write"):
            chat_config = write_chat_files(tmp, chat.result())
        lineage = build_lineage(plan, name=name, source_kind="model", source_path=model.path,
                                source_record=source_record)
        lineage["source"]["content_sha256"] = weights["source_content_sha256"]
        gate_and_finalize(tmp, lineage, chat_config, weights, timer, t_start, gate)
    return AddResult(name if output is None else None, destination, lineage)


def resolve_destination(registry: Registry, name: str | None, output: Path | None, source: Path,
                        quantization: str, scales: str) -> tuple[str | None, Path]:
    """(registry name, directory): --output wins; else the registry under --name or a default name."""
    if output is not None:
        return name, Path(output)
    name = check_name(name or default_name(source, quantization, scales))
    return name, registry.path(name)


def gate_and_finalize(tmp: Path, lineage: dict, chat_config: dict, weights: dict, timer: StageTimer,
                      t_start: float, gate: Callable[[Path, dict], dict | None] | None) -> None:
    """Timings, the equivalence gate on the staged artifact (a failure writes nothing), card, hashes."""
    lineage["timings"] = {k: round(v, 4) for k, v in timer.seconds.items()}
    if gate is not None:
        t_eval = time.perf_counter()
        lineage["eval"] = gate(tmp, lineage)
        lineage["timings"]["eval"] = round(time.perf_counter() - t_eval, 4)
    lineage["timings"]["total"] = round(time.perf_counter() - t_start, 4)
    finalize_artifact(tmp, lineage, chat_config, weights["shard_hashes"])


def side_process() -> ThreadPoolExecutor:
    """One worker thread for the side job (transformers' tokenizer and chat template: seconds of
    imports) that runs while the weights stream. A spawned process would avoid the GIL but pay a
    fresh interpreter and torch import, which costs more than it saves."""
    return ThreadPoolExecutor(1)


def write_chat_files(out_dir: Path, built: tuple[dict, list[Path]]) -> dict:
    """mlc-chat-config.json and the tokenizer files it lists."""
    chat_config, tokenizer_files = built
    write_chat_config(out_dir, chat_config)
    for path in tokenizer_files:
        shutil.copyfile(path, out_dir / path.name)
    return chat_config


def build_lineage(plan: ConversionPlan, *, name: str | None, source_kind: str, source_path: Path,
                  source_record: dict | None = None) -> dict[str, Any]:
    source = {"kind": source_kind, "path": str(Path(source_path).resolve()),
              "config_sha256": config_sha256(plan.model.config),
              "weight_files": weight_file_stamps(plan.model)}
    if source_record:
        source.update(source_record)
    return {
        "format": "personalize-artifact/1",
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model_type": plan.config.model_type,
        "quantization": plan.quantization,
        "quantization_options": {"scales": plan.scales},
        "library_key": plan.library_key,
        "compiled_config": plan.config.compiled,
        "prebuilt_library": plan.prebuilt,
        "tools": tool_versions(),
    }


def quantization_options(lineage: dict) -> dict:
    """How an artifact's tensors were quantized beyond the scheme name (older artifacts: MLC's scales)."""
    return lineage.get("quantization_options") or {"scales": "mlc"}


def weight_file_stamps(model: ModelDir) -> dict[str, dict[str, int]]:
    """Size and mtime of every weight file: a cheap check that a base has not changed since."""
    out = {}
    for path in model.weights.files:
        st = path.stat()
        out[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def finalize_artifact(out_dir: Path, lineage: dict, chat_config: dict, shard_hashes: dict[str, str]) -> None:
    """Model card + personalize.json with the sha256 and size of every other file."""
    from artifacts.lineage import file_map
    from artifacts.model_card import render_model_card

    (out_dir / "README.md").write_text(render_model_card(lineage, chat_config, repo_id=None, artifact_dir=out_dir))
    lineage["files"] = file_map(out_dir, known_sha256=shard_hashes)
    write_lineage(out_dir, lineage)


def default_name(source: Path, quantization: str, scales: str = "mlc") -> str:
    stem = Path(source).resolve().name or "model"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.") or "model"
    return f"{safe}-{quantization}" + ("" if scales == "mlc" else f"-{scales}")
