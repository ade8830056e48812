"""What each MLC runtime needs to run an artifact: the mlc_llm command, a WebLLM ModelRecord, and the
iOS/Android mlc-package-config.json entry, with a VRAM estimate.

Everything is derived from the artifact's own files (mlc-chat-config.json, tensor-cache.json,
personalize.json), where it was pushed, and the catalog of MLC's prebuilt libraries; nothing here
imports `personalize`.

No library name is invented:
  * WebLLM: `model_lib` is MLC's prebuilt WebGPU library whose compiled config fits the artifact
    (catalog/), with the @mlc-ai/web-llm versions that load it, and the context window MLC's own record
    runs it with (no prefill_chunk_size: WebLLM takes it from the library). When none fits there is
    no ModelRecord, and the notes say why and what to do.
  * mlc_llm: `mlc_llm chat HF://ORG/NAME` (or the artifact directory): MLC's runtime compiles or
    finds its own library for the config. `--model-lib` only with an MLC library the user passes.
  * iOS/Android: the `mlc_llm package` model_list entry (python/mlc_llm/interface/package.py: model,
    model_id, estimated_vram_bytes, bundle_weight, overrides, model_lib = a system-lib prefix that
    `package` compiles under, or takes from model_lib_path_for_prepare_libs when the user passes a .tar).

VRAM estimate: see artifacts/deploy.py (the model card uses the same).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from artifacts import Artifact
from artifacts.deploy import (LOW_RESOURCE_MIB, estimate_vram, parameter_bytes,  # noqa: F401 (re-exported)
                              system_lib_name, webgpu_wasm_name)
from catalog import directory_for_webllm, find_libraries, why_no_library
from catalog.library_metadata import read_library_metadata, system_lib_prefix

from .hub import DEFAULT_ENDPOINT, HubError


class ShareError(HubError):
    """The artifact lacks what a share record needs."""


def local_revision(artifact_dir: Path) -> str:
    """The revision `personalize serve` advertises for an unpushed artifact (X-Repo-Commit): the sha1 of
    its personalize.json, which holds the sha256 of every other file, so it changes with any content."""
    return Artifact(artifact_dir).revision


def pick_library(chat_config: dict, webllm_version: str | None = None):
    """(MLC's prebuilt library that fits, every fitting library) for the artifact's config."""
    model_type, quant = chat_config.get("model_type"), chat_config.get("quantization")
    matches = find_libraries(str(model_type), chat_config.get("model_config") or {}, str(quant))
    if webllm_version is not None:
        directory = directory_for_webllm(webllm_version)
        if directory is None:
            raise ShareError(f"@mlc-ai/web-llm {webllm_version} loads no catalogued library directory",
                             hint="pass a version from 0.2.51 on, or leave out --webllm-version")
        chosen = [m for m in matches if m.directory == directory]
        return (chosen[0] if chosen else None), matches
    return (matches[0] if matches else None), matches


def share_records(artifact_dir: Path, *, name: str, repo_id: str | None = None, revision: str = "main",
                  endpoint: str = DEFAULT_ENDPOINT, local_url: str | None = None, model_lib: str | None = None,
                  webllm_version: str | None = None) -> dict:
    """One document with what every runtime takes.

    Hub mode (`repo_id`): URLs point at `{endpoint}/{repo_id}`. Local mode (`local_url`, the base URL of
    `personalize serve`): the model is `{local_url}/local/{name}/resolve/<rev>/`, pinned to the artifact's
    content, and the mlc_llm / app entries use the artifact directory itself.
    `model_lib`: an MLC model library (.so/.dylib/.tar) for mlc_llm and the apps, checked to be one.
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
    library, matches = pick_library(chat_config, webllm_version)
    notes: list[str] = []

    if local_url is not None:
        base = local_url.rstrip("/")
        served_repo = f"local/{name}"
        pinned = artifact.revision
        model_url = f"{base}/{served_repo}/resolve/{pinned}/"  # a re-added artifact gets a new URL
        revision = pinned
        mlc_model = str(artifact_dir)
        app_model, bundle = str(artifact_dir), True
        model_id = name
    else:
        base = endpoint.rstrip("/")
        served_repo = repo_id
        model_url = f"{base}/{repo_id}" + ("" if revision == "main" else f"/resolve/{revision}/")
        mlc_model = f"HF://{repo_id}"
        app_model, bundle = f"HF://{repo_id}", False
        model_id = repo_id.split("/")[-1]
        if revision != "main":
            notes.append(f"mlc_llm and the iOS/Android apps always fetch the main branch of {repo_id}; "
                         f"only the WebLLM record points at '{revision}'")
        if base != DEFAULT_ENDPOINT:
            notes.append(f"pushed to {base}, not huggingface.co: HF:// links resolve on huggingface.co only")

    # The context the runtimes should use: what MLC runs its prebuilt library with, else the artifact's own.
    context = library.context_window_size if library is not None else int(chat_config.get("context_window_size", -1))
    sized = dict(chat_config, context_window_size=context) if context > 0 else chat_config
    vram = estimate_vram(sized, artifact.tensor_cache.doc)

    command = ["mlc_llm", "chat", mlc_model]
    package_lib, lib_paths = system_lib_name(model_type, quant, library_key), {}
    if model_lib is not None:
        meta = read_library_metadata(Path(model_lib))
        if (meta.get("model_type"), meta.get("quantization")) != (model_type, quant):
            raise ShareError(f"{model_lib} is a {meta.get('model_type')} {meta.get('quantization')} library, the "
                             f"artifact is {model_type} {quant}", path=model_lib,
                             hint=f"pass the MLC library compiled for this base in {quant} "
                             f"(`personalize check {name} --lib FILE` compares them in full)")
        command += ["--model-lib", str(model_lib)]
        prefix = system_lib_prefix(Path(model_lib)) if str(model_lib).endswith(".tar") else None
        if prefix:
            package_lib, lib_paths = prefix, {prefix: str(model_lib)}
    else:
        notes.append("mlc_llm compiles (or finds in its cache) a library for this config on first run; pass "
                     "--model-lib with an MLC library to use that one")

    webllm: dict[str, Any]
    if library is not None:
        record: dict[str, Any] = {
            "model": model_url,
            "model_id": model_id,
            "model_lib": library.url,
            "vram_required_MB": vram.total_mib,
            "low_resource_required": vram.total_mib <= LOW_RESOURCE_MIB,
            "overrides": {"context_window_size": context},
        }
        features = set(library.required_features) | ({"shader-f16"} if vram.model_dtype == "float16" else set())
        if features:
            record["required_features"] = sorted(features)
        webllm = {"model_record": record, "app_config": {"model_list": [record]}, "library": library.summary(),
                  "webllm_versions": library.webllm["range"],
                  "libraries": [{"url": m.url, "webllm_versions": m.webllm["range"]} for m in matches]}
        notes.append(f"WebLLM: {library.file} is MLC's prebuilt library for {library.base_model} ({quant}); load it "
                     f"with @mlc-ai/web-llm {library.webllm['range']} (other versions: see webllm.libraries)")
        if vram.model_dtype == "float16":
            notes.append("WebLLM: this f16 library needs a WebGPU adapter with shader-f16")
    else:
        reason = (why_no_library(str(model_type), chat_config.get("model_config") or {}, str(quant))
                  if not matches else f"no catalogued library of @mlc-ai/web-llm {webllm_version} fits")
        webllm = {"model_record": None, "app_config": None, "library": None, "reason": reason}
        notes.append(f"WebLLM: {reason}")
    if vram.model_dtype == "bfloat16":
        notes.append("WebGPU has no bfloat16: use a f16 or f32 quantization for WebLLM")

    overrides = {"context_window_size": context} if context > 0 else {}
    if int(chat_config.get("prefill_chunk_size", -1)) > 0:
        overrides["prefill_chunk_size"] = int(chat_config["prefill_chunk_size"])
    package_entry = {
        "model": app_model,
        "model_id": model_id,
        "estimated_vram_bytes": vram.total,
        "model_lib": package_lib,
        "bundle_weight": bundle,
        "overrides": overrides,
    }

    def package_config(device: str) -> dict:
        doc: dict[str, Any] = {"device": device, "model_list": [package_entry]}
        if lib_paths:
            doc["model_lib_path_for_prepare_libs"] = lib_paths
        return doc

    return {
        "name": name,
        "repo_id": served_repo,
        "revision": revision,
        "local": local_url is not None,
        "model_url": model_url,
        "model_lib": package_lib,
        "library_key": library_key,
        "vram": vram.to_json(),
        "mlc_llm": {"command": " ".join(_quote(c) for c in command), "argv": command, "model": mlc_model,
                    "model_lib_path": str(model_lib) if model_lib else None},
        "webllm": webllm,
        "mlc_package_config": {"iphone": package_config("iphone"), "android": package_config("android")},
        "notes": notes,
    }


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_./:@%+=,-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"
