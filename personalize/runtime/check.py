"""Check an artifact against a library's `_metadata` before any weight is used.

MLC's runtimes check only parameter names eagerly (shapes/dtypes fail at the first kernel, the
hyper-parameters baked into the library never). Here every mismatch is refused up front, naming
the parameter or config field.
"""

from __future__ import annotations

from typing import Any

from artifacts import Artifact
from artifacts.format import MLC_CHAT_CONFIG_JSON
from personalize.arch import ArchitectureError, library_key
from personalize.library.from_chat_config import library_config_from_chat_config

from .errors import ArtifactMismatchError


def resolve_shape(shape: list, chat_config: dict[str, Any], path: str) -> list[int]:
    out = []
    for dim in shape:
        if isinstance(dim, str):
            if not isinstance(chat_config.get(dim), int):
                raise ArtifactMismatchError(f"{MLC_CHAT_CONFIG_JSON} lacks {dim!r}, needed by the library",
                                            path=path, field=dim, hint="regenerate the artifact")
            dim = chat_config[dim]
        out.append(int(dim))
    return out


def check_artifact(metadata: dict[str, Any], artifact: Artifact) -> None:
    """Raise ArtifactMismatchError naming the first field or parameter that does not fit."""
    chat_config = artifact.chat_config
    records = artifact.tensor_cache.records
    cfg_path = str(artifact.chat_config_path)
    cache_path = str(artifact.tensor_cache.path)
    lib_hint = "run it on the library built for this artifact (omit --lib to build it)"
    for field in ("model_type", "quantization"):
        if chat_config.get(field) != metadata.get(field):
            raise ArtifactMismatchError(
                f"{field} {chat_config.get(field)!r} does not match the library's {metadata.get(field)!r}",
                path=cfg_path, field=field, hint=lib_hint)
    try:
        config = library_config_from_chat_config(chat_config, cfg_path)
    except ArchitectureError as exc:
        raise ArtifactMismatchError(str(exc), path=cfg_path, field="model_config", hint=exc.hint) from exc
    compiled = metadata.get("config", {})
    for key in sorted(set(compiled) | set(config.compiled)):
        if compiled.get(key) != config.compiled.get(key):
            raise ArtifactMismatchError(
                f"model_config.{key} = {config.compiled.get(key)!r} but the library was compiled with "
                f"{compiled.get(key)!r}", path=cfg_path, field=f"model_config.{key}", hint=lib_hint)
    if metadata.get("vocab_size") is not None and chat_config.get("vocab_size") != metadata["vocab_size"]:
        raise ArtifactMismatchError(
            f"vocab_size {chat_config.get('vocab_size')} does not match the library's {metadata['vocab_size']}",
            path=cfg_path, field="vocab_size", hint=lib_hint)
    if chat_config.get("vocab_size") != config.vocab_size:
        raise ArtifactMismatchError(
            f"vocab_size {chat_config.get('vocab_size')} differs from model_config.vocab_size {config.vocab_size}",
            path=cfg_path, field="vocab_size", hint=f"regenerate {MLC_CHAT_CONFIG_JSON}")
    if metadata.get("library_key") not in (None, library_key(config, metadata["quantization"])):
        raise ArtifactMismatchError("the artifact's library key differs from the library's", path=cfg_path,
                                    field="library_key", hint=lib_hint)
    expected = {p["name"]: p for p in metadata["params"]}
    for name, p in expected.items():
        rec = records.get(name)
        if rec is None:
            raise ArtifactMismatchError(f"parameter {name} is missing from the artifact", path=cache_path,
                                        field=name, hint=lib_hint)
        want = resolve_shape(p["shape"], chat_config, cfg_path)
        if list(rec["shape"]) != want or rec["dtype"] != p["dtype"]:
            raise ArtifactMismatchError(
                f"parameter {name}: artifact {rec['shape']} {rec['dtype']} vs library {want} {p['dtype']}",
                path=cache_path, field=name, hint=lib_hint)
    extra = sorted(set(records) - set(expected))
    if extra:  # MLC silently drops these; an extra lm_head means an untied model on a tied library
        raise ArtifactMismatchError(f"parameter {extra[0]} is not used by the library"
                                    + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""),
                                    path=cache_path, field=extra[0], hint=lib_hint)
