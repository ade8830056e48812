"""`personalize add ./adapter`: resolve and pin the base, merge tensor by tensor, reuse, gate.

The base is read once, one parameter at a time; each touched tensor is merged in float32 just
before quantization. Parameters the adapter does not touch are copied byte-for-byte from the
base's artifact when the registry holds one with the same quantization and the same base content.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

from artifacts.chat_config import build_chat_config
from artifacts.tensor_cache import TensorCacheIndex
from ingest.adapter import Adapter, load_adapter
from ingest.errors import IngestError
from ingest.merge import merge_tensor
from ingest.source import ModelDir, TOKENIZER_FILES, config_sha256, open_model_dir, read_json
from quantize import get_scheme, library_params
from quantize.spec import SourceParam
from registry.store import Registry, is_artifact_dir, staged_directory

from .evaluate import make_gate
from .pipeline import (AddResult, ConversionPlan, StageTimer, build_lineage, gate_and_finalize, plan_conversion,
                       quantization_options, resolve_destination, side_process, write_chat_files, write_weights)

# Config fields that must agree between the adapter's recorded base and the base given.
IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "vocab_size", "tie_word_embeddings")


@dataclass(frozen=True)
class BaseResolution:
    """Where the base lives: its HF dir, and (optionally) its artifact in the registry."""

    model_dir: Path
    spec: str
    artifact: Path | None = None
    revision: str | None = None


def resolve_base(spec: str, registry: Registry, adapter_path: Path) -> BaseResolution:
    """A registry name (its recorded source dir) or a local HF model directory."""
    candidates = [Path(spec).expanduser(), (adapter_path / spec)]
    for path in candidates:
        if path.is_dir() and (path / "config.json").is_file():
            return BaseResolution(path.resolve(), spec)
    if is_artifact_dir(Path(spec)) or spec in registry.names():
        artifact = registry.resolve(spec)
        lineage = read_json(artifact / "personalize.json")
        source = lineage.get("source", {})
        if source.get("kind") != "model":
            raise IngestError(f"registry entry {spec!r} is itself an adapter variant", path=artifact,
                              hint="pass the base model (or its registry name), not another variant")
        src_dir = Path(source.get("path", ""))
        if not (src_dir / "config.json").is_file():
            raise IngestError(f"the source of registry entry {spec!r} is gone: {src_dir}", path=src_dir,
                              hint="pass the base model's HF directory with --base")
        return BaseResolution(src_dir, spec, artifact=artifact, revision=source.get("revision"))
    # The adapter's recorded base may be a Hub id whose artifact was added from hf://.
    for entry in registry.entries():
        source = entry.lineage.get("source", {})
        if source.get("kind") == "model" and source.get("hub") == spec and Path(source.get("path", "")).is_dir():
            return BaseResolution(Path(source["path"]), spec, artifact=entry.path, revision=source.get("revision"))
    raise IngestError(f"cannot find the base model {spec!r}", path=adapter_path / "adapter_config.json",
                      hint="pass --base with a registry name or a local HF model directory")


def find_registry_artifact(registry: Registry, base_dir: Path, quantization: str,
                           options: dict | None = None) -> Path | None:
    """The registry's artifact of this exact base directory and quantization (and quantization
    options, e.g. the scale mode), if any."""
    options = options or {"scales": "mlc"}
    for entry in registry.entries():
        source = entry.lineage.get("source", {})
        if (source.get("kind") == "model" and entry.lineage.get("quantization") == quantization
                and quantization_options(entry.lineage) == options
                and Path(source.get("path", "/nonexistent")).resolve() == base_dir.resolve()):
            return entry.path
    return None


def check_recorded_base(adapter: Adapter, base: ModelDir, registry: Registry, adapter_dir: Path,
                        force_base: bool) -> dict | None:
    """Compare the base given with the one the adapter was trained on, when that one can be read."""
    recorded = adapter.base_model_name_or_path
    if not recorded:
        return None
    try:
        found = resolve_base(recorded, registry, adapter_dir)
    except IngestError:
        return {"recorded": recorded, "readable": False}
    recorded_cfg = read_json(found.model_dir / "config.json")
    diffs = [f for f in IDENTITY_FIELDS if recorded_cfg.get(f) != base.config.get(f)]
    if diffs and not force_base:
        f = diffs[0]
        raise IngestError(
            f"the adapter was trained on {recorded} but --base differs in {f} "
            f"({recorded_cfg.get(f)!r} vs {base.config.get(f)!r})", path=base.config_path,
            hint="pass the base the adapter was trained on, or --force-base to convert anyway")
    return {"recorded": recorded, "readable": True, "config_matches": not diffs,
            "same_directory": found.model_dir.resolve() == base.path.resolve()}


def resized_shapes(adapter: Adapter, base_shapes: dict, new_vocab: int | None) -> dict[str, tuple[int, ...]]:
    """Shapes of the vocab-sized tensors once the adapter has replaced them with `new_vocab` rows."""
    if new_vocab is None:
        return {}
    out = {}
    for name in adapter.target_hf_names():
        edit = adapter.edit_for(name)
        if edit is not None and edit.changes_vocab_dim and name in base_shapes:
            out[name] = (new_vocab,) + tuple(base_shapes[name][1:])
    return out


def same_base_files(base_lineage: dict, base_model: ModelDir) -> bool:
    from .pipeline import weight_file_stamps

    return base_lineage.get("source", {}).get("weight_files") == weight_file_stamps(base_model)


def make_reuse(base_artifact: Path | None, base_lineage: dict | None, plan: ConversionPlan,
               touched: set[str]) -> Callable[[SourceParam], list | None] | None:
    """Copy untouched parameters' finished tensors from the base artifact (same scheme, same scale
    mode, same base)."""
    if base_artifact is None or quantization_options(base_lineage or {}) != {"scales": plan.scales}:
        return None
    scheme = get_scheme(plan.quantization)
    cache = TensorCacheIndex(base_artifact)

    def reuse(param: SourceParam):
        if touched.intersection(param.sources):
            return None
        wanted = library_params([param], scheme)
        if not all(lib.name in cache.records for lib in wanted):
            return None
        out = []
        for lib in wanted:
            array = cache.load(lib.name)
            concrete = tuple(int(d) if isinstance(d, int) else s for d, s in zip(lib.shape, array.shape))
            if tuple(array.shape) != concrete or str(array.dtype) != lib.dtype:
                return None
            out.append((lib.name, array))
        return out

    return reuse


def add_adapter(adapter_dir: Path, *, quantization: str, name: str | None, output: Path | None,
                base: str | None, force_base: bool, conv_template: str | None, force: bool, evaluate: bool,
                device: str, progress=None, progress_total=None, log=None, source_record: dict | None = None,
                registry: Registry | None = None, scales: str = "mlc", context_window: int | None = None,
                prefill_chunk: int | None = None, lib: str | None = None) -> AddResult:
    t_start = time.perf_counter()
    registry = registry or Registry()
    adapter = load_adapter(adapter_dir)
    spec = base or adapter.base_model_name_or_path
    if not spec:
        raise IngestError("the adapter does not name its base model", path=adapter_dir / "adapter_config.json",
                          hint="pass --base with a registry name or a local HF model directory")
    resolved = resolve_base(spec, registry, adapter_dir)
    base_model = open_model_dir(resolved.model_dir)
    recorded = check_recorded_base(adapter, base_model, registry, adapter_dir, force_base) if base else None
    shapes = {n: i.shape for n, i in base_model.weights.tensors.items()}
    adapter.check_against_base(shapes, base_model.config)
    for warning in adapter.warnings:
        if log:
            log(f"[yellow]adapter:[/yellow] {warning}")
    override = {}
    new_vocab = adapter.resized_vocab_size()
    if new_vocab is not None:
        override["vocab_size"] = new_vocab
    plan = plan_conversion(base_model, quantization, config_override=override,
                           shape_overrides=resized_shapes(adapter, shapes, new_vocab), scales=scales,
                           context_window=context_window, prefill_chunk=prefill_chunk)
    touched = set(adapter.target_hf_names())

    base_artifact = resolved.artifact if resolved.artifact is not None else None
    options = {"scales": plan.scales}
    if base_artifact is not None:
        resolved_lineage = read_json(base_artifact / "personalize.json")
        if resolved_lineage.get("quantization") != quantization or quantization_options(resolved_lineage) != options:
            base_artifact = None
    if base_artifact is None:
        base_artifact = find_registry_artifact(registry, resolved.model_dir, quantization, options)
    base_lineage = read_json(base_artifact / "personalize.json") if base_artifact else None
    if base_lineage is not None and not same_base_files(base_lineage, base_model):
        base_artifact, base_lineage = None, None  # the base changed since its artifact was written
    if new_vocab is not None:
        base_artifact = None  # a resized vocab changes the embedding/head: nothing safe to copy blindly
    reuse = make_reuse(base_artifact, base_lineage, plan, touched)

    name, destination = resolve_destination(registry, name, output, adapter_dir, quantization, scales)
    if progress_total:
        progress_total(plan.source_bytes)
    timer = StageTimer()
    with staged_directory(destination, force) as tmp, tempfile.TemporaryDirectory() as chat_src, \
            side_process() as pool:
        chat_dir = overlay_tokenizer_dir(Path(chat_src), base_model.path, adapter_dir)
        chat = pool.submit(build_chat_config, model_type=plan.config.model_type, quantization=plan.quantization,
                           model_config=plan.config.model_config, source_dir=chat_dir,
                           conv_template=conv_template)
        weights = write_weights(plan, tmp, timer, progress,
                                merge=lambda hf_name, arr: merge_tensor(adapter, hf_name, arr), reuse=reuse,
                                merge_targets=touched)
        with timer.time("write"):
            chat_config = write_chat_files(tmp, chat.result())
        lineage = build_lineage(plan, name=name, source_kind="adapter", source_path=adapter_dir,
                                source_record=source_record)
        lineage["adapter"] = {"peft_type": adapter.peft_type, "config": adapter.config,
                              "config_sha256": adapter.config_sha256,
                              "touched_tensors": len(touched), "resized_vocab": new_vocab}
        content = weights["source_content_sha256"] or (base_lineage or {}).get("source", {}).get("content_sha256")
        lineage["base"] = {"spec": resolved.spec, "path": str(resolved.model_dir), "revision": resolved.revision,
                           "config_sha256": config_sha256(base_model.config), "content_sha256": content,
                           "artifact": str(base_artifact) if base_artifact else None,
                           "reused_params": weights["reused_params"]}
        if recorded is not None:
            lineage["base"]["recorded_base_check"] = recorded
        gate = make_gate(reference_dir=base_model.path, adapter_dir=adapter_dir, device=device, log=log) \
            if evaluate else None
        if lib is not None:
            from .add import checked_against_library

            gate = checked_against_library(gate, lib)
        gate_and_finalize(tmp, lineage, chat_config, weights, timer, t_start, gate)
    return AddResult(name if output is None else None, destination, lineage)


def overlay_tokenizer_dir(tmp: Path, base_dir: Path, adapter_dir: Path) -> Path:
    """config + generation config from the base; tokenizer files from the adapter when it has them."""
    adapter_has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    for f in ("config.json", "generation_config.json") + TOKENIZER_FILES:
        src = adapter_dir / f if adapter_has_tokenizer and (adapter_dir / f).is_file() and f != "config.json" \
            else base_dir / f
        if f in TOKENIZER_FILES and adapter_has_tokenizer and f not in ("generation_config.json",) \
                and not (adapter_dir / f).is_file():
            continue  # never mix base and adapter tokenizer files
        if src.is_file():
            shutil.copyfile(src, tmp / f)
    return tmp


