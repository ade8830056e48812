"""What each MLC runtime needs to run an artifact: the mlc_llm command, a WebLLM ModelRecord, and the
iOS/Android mlc-package-config.json entry, with a VRAM estimate.

Everything is derived from the artifact's own files (mlc-chat-config.json, tensor-cache.json,
personalize.json) and where it was pushed; nothing here imports `personalize`.

VRAM estimate and library names: see artifacts/deploy.py (the model card uses the same).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from artifacts import Artifact
from artifacts.deploy import (LOW_RESOURCE_MIB, estimate_vram, parameter_bytes,  # noqa: F401 (re-exported)
                              system_lib_name, webgpu_wasm_name)

from .hub import DEFAULT_ENDPOINT, HubError

# MLC's prebuilt WebLLM libraries (binary-mlc-llm-libs); see reference notes §6.
WEBLLM_LIB_PREFIX = "https://raw.githubusercontent.com/mlc-ai/binary-mlc-llm-libs/main/web-llm-models/v0_2_83/base"
LIB_SUFFIXES = (".so", ".dylib", ".dll", ".tar", ".wasm")


class ShareError(HubError):
    """The artifact lacks what a share record needs."""


def _base_model_name(lineage: dict, fallback: str) -> str:
    """The model whose library this artifact runs on: the adapter's base, else the source repo/dir."""
    base = lineage.get("base") or {}
    source = lineage.get("source") or {}
    for candidate in (base.get("hub"), base.get("name"), base.get("path"), source.get("hub"), source.get("path")):
        if candidate:
            return str(candidate).rstrip("/").split("/")[-1]
    return fallback


def find_library(libs_dir: Path | None, library_key: str, suffixes: tuple[str, ...] = LIB_SUFFIXES) -> Path | None:
    """A compiled library in the registry's libs/ whose file name carries the library key."""
    if libs_dir is None or not Path(libs_dir).is_dir() or not library_key:
        return None
    hits = [p for p in Path(libs_dir).rglob(f"*{library_key}*") if p.is_file() and p.suffix in suffixes]
    # The CPU (llvm) build first: it runs anywhere mlc_llm does.
    hits.sort(key=lambda p: ("llvm" not in p.name, p.name))
    return hits[0] if hits else None


def share_records(artifact_dir: Path, *, name: str, repo_id: str | None = None, revision: str = "main",
                  endpoint: str = DEFAULT_ENDPOINT, local_url: str | None = None,
                  libs_dir: Path | None = None, lib_url_prefix: str | None = None) -> dict:
    """One document with what every runtime takes.

    Hub mode (`repo_id`): URLs point at `{endpoint}/{repo_id}`. Local mode (`local_url`, the base URL of
    `personalize serve`): the model is `{local_url}/local/{name}` and the mlc_llm / app entries use the
    artifact directory itself.
    """
    artifact_dir = Path(artifact_dir)
    if repo_id is None and local_url is None:
        raise ShareError(f"{name} has not been pushed", path=artifact_dir,
                         hint=f"run `personalize push {name} --repo ORG/NAME`, pass --repo, or use --local")
    artifact = Artifact(artifact_dir)
    chat_config, lineage = artifact.chat_config, artifact.lineage
    quant = chat_config.get("quantization") or lineage.get("quantization")
    model_type = chat_config.get("model_type") or lineage.get("model_type")
    library_key = lineage.get("library_key")
    if not (quant and model_type and library_key):
        raise ShareError("the artifact does not record its quantization, model_type and library_key",
                         path=artifact.lineage_path, hint="re-create it with `personalize add`")
    vram = artifact.vram()
    lib_name = system_lib_name(model_type, quant, library_key)
    wasm = webgpu_wasm_name(_base_model_name(lineage, name), quant, vram.prefill_chunk_size)
    native_lib = find_library(libs_dir, library_key, (".so", ".dylib", ".dll", ".tar"))
    notes = []

    if local_url is not None:
        base = local_url.rstrip("/")
        served_repo = f"local/{name}"
        model_url = f"{base}/{served_repo}"
        mlc_model = str(artifact_dir)
        lib_prefix = lib_url_prefix or f"{base}/libs"
        app_model, bundle = str(artifact_dir), True
        model_id = name
    else:
        base = endpoint.rstrip("/")
        served_repo = repo_id
        model_url = f"{base}/{repo_id}" + ("" if revision == "main" else f"/resolve/{revision}/")
        mlc_model = f"HF://{repo_id}"
        lib_prefix = lib_url_prefix or WEBLLM_LIB_PREFIX
        app_model, bundle = f"HF://{repo_id}", False
        model_id = repo_id.split("/")[-1]
        if revision != "main":
            notes.append(f"mlc_llm and the iOS/Android apps always fetch the main branch of {repo_id}; "
                         f"only the WebLLM record points at '{revision}'")
        if base != DEFAULT_ENDPOINT:
            notes.append(f"pushed to {base}, not huggingface.co: HF:// links resolve on huggingface.co only")

    command = ["mlc_llm", "chat", mlc_model]
    if native_lib is not None:
        command += ["--model-lib", str(native_lib)]
    else:
        notes.append(f"no compiled library with key {library_key} in the registry: without --model-lib, "
                     "mlc_llm compiles one on first run (`personalize lib build` makes one)")
    notes.append(f"WebLLM needs a WebGPU build of the library; model_lib follows MLC's prebuilt naming for "
                 f"{wasm.split('-' + quant)[0]} and works only if that build has the same compiled config "
                 f"(library key {library_key})")
    if vram.model_dtype == "bfloat16":
        notes.append("WebGPU has no bfloat16: use a f16 or f32 quantization for WebLLM")

    overrides = {"context_window_size": vram.context_window_size, "prefill_chunk_size": vram.prefill_chunk_size}
    record: dict[str, Any] = {
        "model": model_url,
        "model_id": model_id,
        "model_lib": f"{lib_prefix.rstrip('/')}/{wasm}",
        "vram_required_MB": vram.total_mib,
        "low_resource_required": vram.total_mib <= LOW_RESOURCE_MIB,
        "overrides": overrides,
    }
    if vram.model_dtype == "float16":
        record["required_features"] = ["shader-f16"]
    package_entry = {
        "model": app_model,
        "model_id": model_id,
        "estimated_vram_bytes": vram.total,
        "model_lib": lib_name,
        "bundle_weight": bundle,
        "overrides": overrides,
    }
    return {
        "name": name,
        "repo_id": served_repo,
        "revision": revision,
        "local": local_url is not None,
        "model_url": model_url,
        "model_lib": lib_name,
        "library_key": library_key,
        "vram": vram.to_json(),
        "mlc_llm": {"command": " ".join(_quote(c) for c in command), "argv": command, "model": mlc_model,
                    "model_lib_path": str(native_lib) if native_lib else None},
        "webllm": {"model_record": record, "app_config": {"model_list": [record]}},
        "mlc_package_config": {
            "iphone": {"device": "iphone", "model_list": [package_entry]},
            "android": {"device": "android", "model_list": [package_entry]},
        },
        "notes": notes,
    }


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_./:@%+=,-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"
