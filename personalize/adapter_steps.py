"""The adapter's steps of the add pipeline: resolve and pin the base, merge, reuse, tokenizer overlay.

The base is read once, one parameter at a time; each touched tensor is merged in float32 just
before quantization. Parameters the adapter does not touch are copied byte-for-byte from the
base's artifact when the registry holds one with the same quantization and the same base content.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from artifacts import Artifact
from ingest.adapter import Adapter, load_adapter
from ingest.errors import IngestError
from ingest.merge import merge_tensor
from ingest.source import ModelDir, TOKENIZER_FILES, config_sha256, open_model_dir, read_json
from quantize import get_scheme, library_params
from quantize.spec import SourceParam
from registry.store import Registry, is_artifact_dir

from .finalize import quantization_options, weight_file_stamps
from .pipeline import ConversionPlan, PreparedSource, WeightSteps, plan_conversion

if TYPE_CHECKING:
    from .add import AddOptions

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
        lineage = Artifact(artifact).lineage
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
    return base_lineage.get("source", {}).get("weight_files") == weight_file_stamps(base_model)


def make_reuse(base_artifact: Path | None, base_lineage: dict | None, plan: ConversionPlan,
               touched: frozenset[str]) -> Callable[[SourceParam], list | None] | None:
    """Copy untouched parameters' finished tensors from the base artifact (same scheme, same scale
    mode, same base)."""
    if base_artifact is None or quantization_options(base_lineage or {}) != {"scales": plan.scales}:
        return None
    scheme = get_scheme(plan.quantization)
    cache = Artifact(base_artifact).tensor_cache

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


def adapter_source(adapter_dir: Path, options: AddOptions, registry: Registry,
                   log: Callable[[str], None] | None = None) -> PreparedSource:
    """Plan an adapter: its base streams, touched tensors merge, untouched ones may be reused."""
    quantization = options.quantization
    adapter = load_adapter(adapter_dir)
    spec = options.base or adapter.base_model_name_or_path
    if not spec:
        raise IngestError("the adapter does not name its base model", path=adapter_dir / "adapter_config.json",
                          hint="pass --base with a registry name or a local HF model directory")
    resolved = resolve_base(spec, registry, adapter_dir)
    base_model = open_model_dir(resolved.model_dir)
    recorded = check_recorded_base(adapter, base_model, registry, adapter_dir, options.force_base) \
        if options.base else None
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
                           shape_overrides=resized_shapes(adapter, shapes, new_vocab), scales=options.scales,
                           context_window=options.context_window, prefill_chunk=options.prefill_chunk)
    touched = frozenset(adapter.target_hf_names())

    base_artifact, base_lineage = reusable_base_artifact(resolved, base_model, registry, quantization,
                                                         {"scales": plan.scales})
    if new_vocab is not None:
        base_artifact = None  # a resized vocab changes the embedding/head: nothing safe to copy blindly
    reuse = make_reuse(base_artifact, base_lineage, plan, touched)

    def annotate(lineage: dict, weights: dict) -> None:
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

    # merge_tensor is looked up at call time (tests replace it to prove the gate catches a bad merge)
    steps = WeightSteps(merge=lambda hf_name, arr: merge_tensor(adapter, hf_name, arr), merge_targets=touched,
                        reuse=reuse)
    return PreparedSource(kind="adapter", path=adapter_dir, plan=plan, weight_steps=steps,
                          tokenizer_dir=lambda scratch: overlay_tokenizer_dir(scratch, base_model.path, adapter_dir),
                          annotate_lineage=annotate, reference_dir=base_model.path, adapter_dir=adapter_dir)


def reusable_base_artifact(resolved: BaseResolution, base_model: ModelDir, registry: Registry, quantization: str,
                           options: dict) -> tuple[Path | None, dict | None]:
    """(artifact, lineage) of the base converted the same way from the same, unchanged files; else Nones."""
    base_artifact = resolved.artifact
    if base_artifact is not None:
        resolved_lineage = Artifact(base_artifact).lineage
        if resolved_lineage.get("quantization") != quantization or quantization_options(resolved_lineage) != options:
            base_artifact = None
    if base_artifact is None:
        base_artifact = find_registry_artifact(registry, resolved.model_dir, quantization, options)
    base_lineage = Artifact(base_artifact).lineage if base_artifact else None
    if base_lineage is not None and not same_base_files(base_lineage, base_model):
        return None, None  # the base changed since its artifact was written
    return base_artifact, base_lineage


def overlay_tokenizer_dir(tmp: Path, base_dir: Path, adapter_dir: Path) -> Path:
    """The directory the chat config is built from: config.json from the base; when the adapter ships
    a tokenizer, its tokenizer files and generation_config.json (a tokenizer file never comes from
    the base then, so the two are never mixed); otherwise all of them from the base."""
    adapter_has_tokenizer = any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
    names = ("config.json", "generation_config.json") + tuple(f for f in TOKENIZER_FILES
                                                            if f != "generation_config.json")
    for f in names:
        if f == "config.json" or not adapter_has_tokenizer:
            src = base_dir / f
        elif (adapter_dir / f).is_file():
            src = adapter_dir / f
        elif f == "generation_config.json":
            src = base_dir / f  # the adapter's tokenizer without its own generation config
        else:
            continue  # never mix base and adapter tokenizer files
        if src.is_file():
            shutil.copyfile(src, tmp / f)
    return tmp


