"""Planning a conversion and the streaming write loop: read -> (merge | reuse) -> quantize -> shard.

The stages stream: one library parameter (its few HF source tensors) is in memory at a time, and
each finished tensor goes straight into the shard writer. What differs between a full fine-tune
and an adapter is given as `WeightSteps` (merge, reuse); personalize/add.py runs the rest.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from artifacts.tensor_cache import TensorCacheWriter
from ingest.errors import IngestError
from ingest.source import ModelDir
from quantize import NonFiniteWeightError, check_scale_mode, get_scheme, library_params, quantize_param
from quantize.convert import assemble_source
from quantize.spec import SourceParam
from registry.store import pause_point

from .arch import Architecture, LibraryConfig, get_architecture, library_key
from .ordering import counted_source_params, loading_order
from .prebuilt import fit_prebuilt

DEFAULT_QUANTIZATION = "q4f16_1"

# Called as progress(bytes_done_delta, description) while converting.
ProgressFn = Callable[[int, str], None]


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "merge": 0.0, "quantize": 0.0,
                                                               "write": 0.0})

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        pause_point(stage)  # tests only: PERSONALIZE_TEST_PAUSE_AT=<stage> stops here (tests/test_registry_faults.py)
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


@dataclass(frozen=True)
class WeightSteps:
    """The optional per-parameter steps of the write loop (none for a plain full fine-tune).

    reuse: tried first; finished tensors copied from another artifact skip read, merge and quantize.
    merge: applied to every source tensor after reading it.
    merge_targets: the source tensors `merge` changes; the others may stream in row blocks.
    precomputed: finished tensors made before the loop (calibrated rounding, personalize/calibration.py)
        in place of this loop's rounding; the sources are still read for the content hash.
    """

    merge: MergeFn | None = None
    merge_targets: frozenset[str] = frozenset()
    reuse: ReuseFn | None = None
    precomputed: ReuseFn | None = None

    def merges(self, source: str) -> bool:
        return self.merge is not None and source in self.merge_targets


def write_weights(plan: ConversionPlan, out_dir: Path, timer: StageTimer, progress: ProgressFn | None = None,
                  steps: WeightSteps = WeightSteps()) -> dict:
    """Stream every parameter through (reuse | read -> merge -> quantize) -> shard writer.

    Returns the tensor-cache doc, the shards' sha256, how many parameters were reused and the
    content hash of the source tensors, taken as they stream by (name, shape, dtype, bytes): it pins
    a base model without a second pass over its files (None when some tensors were reused, unread).
    """
    scheme = get_scheme(plan.quantization)
    merge, reuse = steps.merge, steps.reuse
    writer = TensorCacheWriter(out_dir)
    infos = plan.model.weights.tensors
    tensor_digests: dict[str, str] = {}
    reused = 0
    out_bytes = 0
    for param in plan.order:
        outputs = reuse(param) if reuse is not None else None
        if outputs is not None:
            reused += 1
        elif steps.precomputed is not None and (outputs := steps.precomputed(param)) is not None:
            with timer.time("read"):
                for source, array in zip(param.sources, plan.model.weights.read(list(param.sources))):
                    tensor_digests[source] = tensor_digest(array)
        elif len(param.sources) == 1 and infos[param.sources[0]].nbytes > ROW_CHUNK_BYTES \
                and not steps.merges(param.sources[0]):
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
                weight = assemble_source(param, arrays)
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
            part = SourceParam(param.name, (block.shape[0],) + tuple(param.shape[1:]), param.sources, param.role,
                               transform=param.transform)
            pieces = quantize_checked(part, assemble_source(part, [block]), scheme, plan.model.weights.tensors,
                                      scales=plan.scales)
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


@dataclass
class PreparedSource:
    """What one kind of source (full fine-tune, adapter) contributes to the one add pipeline.

    Built by `add.model_source` / `adapter_steps.adapter_source` before anything is written; the
    orchestrator (`add.convert`) runs the same steps for every kind and calls these hooks.
    """

    kind: str  # lineage source.kind: "model" | "adapter"
    path: Path  # what the user named: the lineage's source path and the default registry name
    plan: ConversionPlan  # the weights that stream (an adapter's base) and how they are converted
    weight_steps: WeightSteps = WeightSteps()
    # Stage the directory the chat config and tokenizer come from into a scratch dir (None: the model's).
    tokenizer_dir: Callable[[Path], Path] | None = None
    # Add kind-specific lineage once the weights are written: (lineage, write_weights result).
    annotate_lineage: Callable[[dict, dict], None] | None = None
    # The gate's reference: a model dir, plus the adapter peft applies on top of it.
    reference_dir: Path | None = None
    adapter_dir: Path | None = None
