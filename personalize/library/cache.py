"""Compiled libraries, one per (library key, target, TVM version), under $PERSONALIZE_HOME/libs/."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm

from personalize.arch import LibraryConfig, library_key
from registry.store import Registry

from .build import TARGETS, compile_library
from .errors import LibraryError


def libs_dir() -> Path:
    return Registry().libs_dir


def _tvm_tag() -> str:
    return tvm.__version__.replace("+", "_")


# The modules that decide what a compiled library computes: the graph, its kernels, the export and
# compile passes, the architecture definitions the graph consumes (the whole package, so a new
# architecture counts) and the quantization schemes it decodes. Their source is hashed into the
# file name, so a library compiled from other code (a kernel edit) is never picked up.
GRAPH_MODULES = ("personalize.library.model", "personalize.library.cpu_kernels", "personalize.library.longrope",
                 "personalize.library.build", "personalize.arch", "quantize.schemes", "quantize.spec")


@functools.cache
def graph_code_hash() -> str:
    """First 10 hex digits of the sha256 over the source of GRAPH_MODULES (a package: all its .py files)."""
    digest = hashlib.sha256()
    for module in GRAPH_MODULES:
        spec = importlib.util.find_spec(module)
        if spec.submodule_search_locations:
            files = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.py"))
        else:
            files = [Path(spec.origin)]
        for f in files:
            digest.update(f"{module}/{f.name}\n".encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


def library_filename(key: str, quantization: str, model_type: str, target: str) -> str:
    return f"{model_type}-{quantization}-{key}-{target}-tvm{_tvm_tag()}-g{graph_code_hash()}.so"


@dataclass(frozen=True)
class CachedLibrary:
    path: Path
    metadata: dict
    built: bool  # True if this call compiled it


def library_path(config: LibraryConfig, quantization: str, target: str, root: Path | None = None) -> Path:
    key = library_key(config, quantization)
    return (root or libs_dir()) / library_filename(key, quantization, config.model_type, target)


def ensure_library(config: LibraryConfig, quantization: str, target: str = "llvm", *, root: Path | None = None,
                   fast: bool = True, log: Callable[[str], None] | None = None) -> CachedLibrary:
    """The cached library for this config, compiling it first if it is missing.

    Written to a temp file in the same folder and renamed, so a crash never leaves a half library
    and concurrent builders do not corrupt each other (the last rename wins; both are equal).
    """
    if target not in TARGETS:
        raise LibraryError(f"unknown target {target!r}", hint="use llvm or cuda")
    path = library_path(config, quantization, target, root)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return CachedLibrary(path, json.loads(meta_path.read_text()), built=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"building the {config.model_type} {quantization} library for {target} (once per base model) ...")
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        metadata = compile_library(config, quantization, target, Path(tmp), fast=fast, log=say)
        meta_tmp = Path(tmp).with_suffix(".json")
        meta_tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True))
        os.replace(tmp, path)
        os.replace(meta_tmp, meta_path)
    finally:
        for leftover in (Path(tmp), Path(tmp).with_suffix(".json")):
            leftover.unlink(missing_ok=True)
    say(f"library ready: {path}")
    return CachedLibrary(path, metadata, built=True)


def list_libraries(root: Path | None = None) -> list[dict]:
    """One entry per cached library (from the JSON sidecar written next to each .so)."""
    root = root or libs_dir()
    if not root.is_dir():
        return []
    out = []
    for meta_path in sorted(root.glob("*.json")):
        so = meta_path.with_suffix(".so")
        if not so.exists():
            continue
        meta = json.loads(meta_path.read_text())
        out.append({"path": str(so), "model_type": meta.get("model_type"), "quantization": meta.get("quantization"),
                    "library_key": meta.get("library_key"), "target": meta.get("target"), "tvm": meta.get("tvm"),
                    "bytes": so.stat().st_size, "params": len(meta.get("params", []))})
    return out
