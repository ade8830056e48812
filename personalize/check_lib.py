"""`personalize check ARTIFACT --lib FILE|URL`: will this artifact run on that compiled MLC library?

Compared name by name against the metadata the library embeds (catalog/library_metadata.py):
  model_type, quantization; every parameter the library loads present with the same shape (symbolic
  dims such as "vocab_size" resolved from mlc-chat-config.json) and dtype; the KV-cache geometry;
  the sliding window; the prefill chunk.
and, for what the metadata does not carry (RoPE theta and scaling, norm eps, sliding window, tied
embeddings, soft-caps), against the base config the library was compiled from: `--base-config`, or the
catalog entry of that library (found by file name, else by its metadata), or the `config` our own
libraries embed.

What breaks and what does not (decided from how the runtimes use the values):
  * prefill_chunk_size larger than the library's is a mismatch: the library's memory plan bounds
    every prefill buffer by its compiled chunk (WebLLM silently uses the library's value instead,
    the mlc_llm engine would run past the plan).
  * context_window_size larger than the library's compiled one is NOT a mismatch: the paged KV cache
    is allocated at run time from mlc-chat-config.json (WebLLM sizes it by that value; binary-mlc-llm-libs'
    compile_wasm.py: "the context window size does not do anything ... it has become a runtime thing").
    It is reported as a note, since a larger context costs device memory.
  * Extra tensors in the artifact are a note: runtimes look parameters up by name and ignore the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from artifacts import Artifact
from catalog import Library, config_differences, find_by_file, find_by_metadata, normalize_config
from catalog.library_metadata import local_library, read_library_metadata
from personalize.prebuilt import catalog_view
from personalize_errors import UserError


class BaseConfigError(UserError):
    """--base-config cannot be read."""


class LibraryMismatchError(UserError):
    """`add --lib`: the converted artifact does not fit the library (nothing is written)."""

    def __init__(self, result: "LibraryCheck"):
        fields = "; ".join(m.message for m in result.mismatches)
        super().__init__(f"the artifact does not fit {result.library}: {fields}", path=result.library,
                         hint="use the library compiled for this base and quantization, or drop --lib")


@dataclass
class Mismatch:
    field: str
    library: Any
    artifact: Any
    message: str


@dataclass
class LibraryCheck:
    library: str
    metadata: dict[str, Any]
    reference: dict[str, Any] | None
    mismatches: list[Mismatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        meta = {k: self.metadata.get(k) for k in ("model_type", "quantization", "context_window_size",
                                                  "prefill_chunk_size", "sliding_window_size")}
        meta["params"] = len(self.metadata.get("params", []))
        return {"ok": self.ok, "library": self.library, "metadata": meta, "reference": self.reference,
                "mismatches": [asdict(m) for m in self.mismatches], "notes": self.notes}


def check_library(artifact_dir: Path, lib: str, base_config: Path | None = None) -> LibraryCheck:
    """Compare an artifact with a compiled library given as a path or an https URL."""
    with local_library(lib) as path:
        metadata = read_library_metadata(path)
    artifact = Artifact(artifact_dir)
    chat, cache = artifact.chat_config, artifact.tensor_cache
    result = LibraryCheck(library=lib, metadata=metadata, reference=None)
    compare_metadata(result, metadata, chat, cache.records, cache.path)
    compare_scalars(result, metadata, chat, lib, base_config)
    return result


def compare_metadata(result: LibraryCheck, meta: dict, chat: dict, records: dict[str, dict], cache_path: Path) -> None:
    add = result.mismatches.append
    for key in ("model_type", "quantization"):
        if chat.get(key) != meta.get(key):
            add(Mismatch(key, meta.get(key), chat.get(key),
                         f"{key}: the library is {meta.get(key)!r}, the artifact {chat.get(key)!r}"))
    mc = chat.get("model_config") or {}
    for key, value in (meta.get("kv_cache") or {}).items():
        mine = mc.get(key) if key != "num_key_value_heads" else mc.get(key) or mc.get("num_attention_heads")
        if mine is not None and mine != value:
            add(Mismatch(f"model_config.{key}", value, mine, f"{key}: the library's KV cache has {value}, the "
                         f"artifact {mine}"))
    cache = str(cache_path)
    for p in meta.get("params", []):
        rec = records.get(p["name"])
        if rec is None:
            add(Mismatch(f"params.{p['name']}", p["shape"], None, f"parameter {p['name']} is missing from {cache}"))
            continue
        shape = [resolve_dim(d, chat) for d in p["shape"]]
        if shape != list(rec["shape"]):
            add(Mismatch(f"params.{p['name']}.shape", shape, rec["shape"],
                         f"{p['name']}: the library expects shape {shape} (declared {p['shape']}), the artifact "
                         f"has {rec['shape']}"))
        if p["dtype"] != rec["dtype"]:
            add(Mismatch(f"params.{p['name']}.dtype", p["dtype"], rec["dtype"],
                         f"{p['name']}: the library expects {p['dtype']}, the artifact has {rec['dtype']}"))
    extra = sorted(set(records) - {p["name"] for p in meta.get("params", [])})
    if extra:
        result.notes.append(f"{len(extra)} tensor(s) the library does not load (ignored by the runtime): "
                            + ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    lib_chunk, art_chunk = int(meta.get("prefill_chunk_size", -1)), int(chat.get("prefill_chunk_size", -1))
    if lib_chunk > 0 and (art_chunk <= 0 or art_chunk > lib_chunk):
        add(Mismatch("prefill_chunk_size", lib_chunk, art_chunk,
                     f"prefill_chunk_size {art_chunk} exceeds the library's compiled {lib_chunk}: its buffers are "
                     f"planned for {lib_chunk} tokens (re-add with --prefill-chunk {lib_chunk})"))
    lib_sw, art_sw = int(meta.get("sliding_window_size", -1)), int(chat.get("sliding_window_size", -1))
    if lib_sw != art_sw:
        add(Mismatch("sliding_window_size", lib_sw, art_sw,
                     f"sliding_window_size: the library is compiled with {lib_sw}, the artifact says {art_sw}"))
    lib_ctx, art_ctx = int(meta.get("context_window_size", -1)), int(chat.get("context_window_size", -1))
    if lib_ctx > 0 and art_ctx > lib_ctx:
        result.notes.append(f"context_window_size {art_ctx} is larger than the library's compiled {lib_ctx}: it runs "
                            "(the KV cache is sized at load time from mlc-chat-config.json) but needs more memory "
                            f"than MLC plans for this library; `personalize add --context-window {lib_ctx}` matches it")


def resolve_dim(dim: Any, chat: dict) -> Any:
    """A symbolic dim ("vocab_size") takes the chat config's value; unknown names stay symbolic."""
    if isinstance(dim, str):
        mc = chat.get("model_config") or {}
        value = chat.get(dim, mc.get(dim))
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else dim
    return int(dim)


def compare_scalars(result: LibraryCheck, meta: dict, chat: dict, lib: str, base_config: Path | None) -> None:
    """The compiled-in values the metadata does not carry, against the library's base config."""
    model_type = chat.get("model_type") or ""
    artifact = normalize_config(model_type, catalog_view(model_type, chat.get("model_config") or {}))
    if base_config is not None:
        reference, config = {"source": "base-config", "path": str(base_config)}, read_base_config(base_config)
        diffs = _differences(config, artifact)
    elif isinstance(meta.get("config"), dict):  # personalize's own libraries embed their compiled config
        reference = {"source": "library metadata config"}
        lib_config = normalize_config(meta.get("model_type") or model_type, meta["config"])
        diffs = _differences(lib_config, artifact)
    else:
        candidates = find_by_file(lib)
        source = "catalog (file name)"
        if not candidates:
            candidates, source = find_by_metadata(meta), "catalog (library metadata)"
        configs = {json.dumps(c.config, sort_keys=True): c for c in candidates}
        if not configs:
            result.mismatches.append(Mismatch(
                "base_config", None, None, "the library is not in the catalog of MLC's prebuilt libraries, so its "
                "RoPE theta/scaling, norm eps and tying cannot be checked: pass --base-config CONFIG.json (the "
                "config.json of the model it was compiled from)"))
            return
        if len(configs) > 1:
            names = sorted({c.base_model for c in candidates})
            result.mismatches.append(Mismatch(
                "base_config", names, None, f"the library's shapes fit several catalogued bases with different "
                f"compiled-in values ({', '.join(names)}): pass --base-config CONFIG.json"))
            return
        entry: Library = next(iter(configs.values()))
        reference = {"source": source, "library": entry.library, "base_model": entry.base_model,
                     "base_hub_id": entry.base_hub_id}
        diffs = [(k, a, b) for k, a, b in config_differences(entry, model_type, artifact) if k != "model_type"]
    result.reference = reference
    mc = chat.get("model_config") or {}
    for key, lib_value, art_value in diffs:
        name = artifact_key(mc, key)
        result.mismatches.append(Mismatch(
            f"model_config.{name}", lib_value, art_value,
            f"{name}: the library is compiled with {lib_value!r}, the artifact has {art_value!r} "
            f"(library values from {reference.get('base_model') or reference['source']})"))


# The catalog's names for compiled-in values -> the keys MLC's model_config uses for them.
SOURCE_KEYS = {"norm_eps": ("rms_norm_eps", "layer_norm_eps", "norm_eps"),
               "rope_theta": ("rope_theta", "position_embedding_base"),
               "sliding_window": ("sliding_window_size", "sliding_window")}


def artifact_key(mc: dict, key: str) -> str:
    """The field name as the artifact's mlc-chat-config.json spells it (rms_norm_eps, position_embedding_base)."""
    return next((k for k in SOURCE_KEYS.get(key, ()) if k in mc), SOURCE_KEYS.get(key, (key,))[0])


def _differences(reference: dict, artifact: dict) -> list[tuple[str, Any, Any]]:
    from catalog import EXTRA_KEYS, SCALAR_KEYS, SHAPE_KEYS, _same, _same_scaling

    out = []
    # vocab_size is left to the parameter shapes: a library with a symbolic vocab takes a resized one.
    keys = [k for k in SHAPE_KEYS if k != "vocab_size"] + list(SCALAR_KEYS) + [k for k in EXTRA_KEYS if k in reference]
    for key in keys:
        a, b = reference.get(key), artifact.get(key)
        if not (_same_scaling(a, b) if key == "rope_scaling" else _same(a, b)):
            out.append((key, a, b))
    return out


def read_base_config(path: Path) -> dict[str, Any]:
    """A base's HF config.json in the catalog's vocabulary, derived the way `add` derives it."""
    path = Path(path)
    try:
        hf = json.loads(path.read_text())
    except FileNotFoundError:
        raise BaseConfigError(f"{path} does not exist", path=path, hint="pass the base model's config.json") from None
    except ValueError as exc:
        raise BaseConfigError(f"{path} is not valid JSON: {exc}", path=path, hint="pass the base's config.json") from None
    model_type = hf.get("model_type") or ""
    from personalize.arch import ARCHITECTURES
    from personalize.arch.base import rope_from_hf

    if model_type in ARCHITECTURES:
        config = ARCHITECTURES[model_type].library_config(hf, path=str(path))
        return normalize_config(model_type, catalog_view(model_type, config.model_config))
    theta, scaling = rope_from_hf(hf)
    return normalize_config(model_type, {**hf, "rope_theta": theta, "rope_scaling": scaling})
