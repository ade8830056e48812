"""The base work of a batch, done once in the parent before any worker starts.

Per quantization: the base's artifact in the registry (added now unless the registry already holds
one of the same files, quantization and options), whose untouched tensors every adapter variant
copies; the compiled library the gates run on (compiled here, so workers never race to build it);
and the library catalog's answer (MLC's prebuilt library for this config), looked up once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from registry.store import Registry

from .content import source_content_sha256
from .manifest import HF_SCHEME, Manifest


@dataclass
class BaseArtifact:
    quantization: str
    name: str | None
    path: Path
    content_sha256: str
    library_key: str
    added: bool  # True when this batch converted it
    library: str | None = None  # the compiled library's path (when a gate needs it)
    catalog: dict = field(default_factory=dict)
    context_window: int | None = None  # as the base artifact was sized (the catalog's library, if one fits)
    prefill_chunk: int | None = None

    def to_json(self) -> dict:
        return {"quantization": self.quantization, "name": self.name, "path": str(self.path),
                "content_sha256": self.content_sha256, "library_key": self.library_key, "added": self.added,
                "library": self.library, "catalog": self.catalog, "context_window": self.context_window,
                "prefill_chunk": self.prefill_chunk}


@dataclass
class PreparedBase:
    spec: str
    model_dir: Path
    artifacts: dict[str, BaseArtifact]

    def to_json(self) -> dict:
        return {"spec": self.spec, "model_dir": str(self.model_dir),
                "artifacts": {q: a.to_json() for q, a in self.artifacts.items()}}


def prepare_base(manifest: Manifest, registry: Registry, *, gate_quantizations: set[str],
                 log: Callable[[str], None] | None = None) -> PreparedBase:
    say = log or (lambda _m: None)
    model_dir = resolve_base_dir(manifest.base, registry)
    out = {}
    for q in manifest.quantizations:
        art = base_artifact(manifest, registry, model_dir, q, log=say)
        if q in gate_quantizations:
            art.library = str(compile_once(art.path, q, manifest.device, log=say))
        art.catalog = consult_catalog(art.path, q)
        out[q] = art
    return PreparedBase(manifest.base, model_dir, out)


def resolve_base_dir(spec: str, registry: Registry) -> Path:
    """The base's HF directory: a dir, hf:// (downloaded into the Hub cache) or a registry name."""
    if spec.startswith(HF_SCHEME):
        from ingest.hub import download_source

        return Path(download_source(spec)[0])
    from personalize.adapter_steps import resolve_base

    return resolve_base(spec, registry, Path.cwd()).model_dir


def base_artifact(manifest: Manifest, registry: Registry, model_dir: Path, quantization: str,
                  log: Callable[[str], None]) -> BaseArtifact:
    from artifacts import Artifact
    from ingest.source import open_model_dir
    from personalize.adapter_steps import find_registry_artifact, same_base_files

    options = {"scales": manifest.scales}
    found = find_registry_artifact(registry, model_dir, quantization, options)
    if found is not None and not same_base_files(Artifact(found).lineage, open_model_dir(model_dir)):
        found = None  # the base's files changed since: convert it again
    added = found is None
    if added:
        from personalize.add import add_source

        log(f"base: converting {model_dir.name} to {quantization} once (its untouched tensors are reused)")
        spec = manifest.base if manifest.base.startswith(HF_SCHEME) else str(model_dir)
        found = add_source(spec, quantization=quantization, scales=manifest.scales, registry=registry,
                           evaluate=False, device=manifest.device, force=manifest.force).path
    lineage = Artifact(found).lineage
    content = (lineage.get("source") or {}).get("content_sha256") or source_content_sha256(model_dir)
    name = found.name if found.parent.resolve() == registry.artifacts_dir.resolve() else None
    chat = Artifact(found).chat_config
    limits = [chat.get(k) for k in ("context_window_size", "prefill_chunk_size")]
    ctx, chunk = (int(v) if isinstance(v, int) and v > 0 else None for v in limits)
    return BaseArtifact(quantization, name, Path(found), content, lineage.get("library_key", ""), added,
                        context_window=ctx, prefill_chunk=chunk)


def compile_once(artifact_dir: Path, quantization: str, device: str, log: Callable[[str], None]) -> Path:
    """The one compiled library of this base and quantization (cached by library key)."""
    from artifacts import Artifact
    from personalize.library import ensure_library, library_config_from_chat_config

    art = Artifact(artifact_dir)
    config = library_config_from_chat_config(art.chat_config, str(art.chat_config_path))
    return ensure_library(config, quantization, "cuda" if device == "cuda" else "llvm", log=log).path


def consult_catalog(artifact_dir: Path, quantization: str) -> dict:
    """MLC's prebuilt library for this base and quantization, from the library catalog
    (`personalize.prebuilt.fit_prebuilt`): asked once per batch here, the answer goes into the report
    and every job gets the base's context window and prefill chunk (which the catalog chose when the
    base was added), so all variants share the base's library. (The add pipeline still looks the
    catalog up inside plan_conversion; a `prebuilt=` argument there would make this the only lookup.)"""
    try:
        from personalize.prebuilt import fit_prebuilt
    except ImportError:
        return {"consulted": False, "reason": "no library catalog in this build (personalize.prebuilt)"}
    from artifacts import Artifact
    from personalize.library import library_config_from_chat_config

    art = Artifact(artifact_dir)
    config = library_config_from_chat_config(art.chat_config, str(art.chat_config_path))
    _, record = fit_prebuilt(config, quantization)
    return {"consulted": True, **record}
