"""What each MLC runtime needs to run an artifact: the mlc_llm command, a WebLLM ModelRecord, and the
iOS/Android mlc-package-config.json entry, with a VRAM estimate.

Everything is derived from the artifact's own files (mlc-chat-config.json, tensor-cache.json,
personalize.json) and where it was pushed; nothing here imports `personalize`.

VRAM estimate (bytes), documented because every runtime asks for it and none measures it for us:
  parameters  = sum over tensor-cache records of numel * itemsize(dtype), i.e. the size on the device
                (f32-to-bf16 records are stored as 2 bytes but decoded to float32, 4 bytes)
  kv_cache    = layers * 2 (K and V) * kv_heads * head_dim * context * bytes(model dtype), with
                context = context_window_size (or sliding_window_size when there is no full window)
  activations = prefill_chunk_size * (3 * hidden + 2 * intermediate) * bytes(model dtype)
                + vocab_size * 4: the widest live buffers while one prefill chunk runs through a layer
                (residual, normed input, attention output; the gate/up projection) plus one row of fp32
                logits. For SmolLM2-135M q0f16 at 4k context this gives 356 MiB against the 359.7 MiB
                WebLLM publishes for its own build of that model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from .hub import DEFAULT_ENDPOINT, HubError, read_lineage

# MLC's prebuilt WebLLM libraries (binary-mlc-llm-libs); see reference notes §6.
WEBLLM_LIB_PREFIX = "https://raw.githubusercontent.com/mlc-ai/binary-mlc-llm-libs/main/web-llm-models/v0_2_83/base"
LOW_RESOURCE_MIB = 2048  # WebLLM marks models that fit in about 2 GB as low_resource_required
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "uint32": 4, "int32": 4,
               "uint16": 2, "int16": 2, "uint8": 1, "int8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
               "bool": 1}
LIB_SUFFIXES = (".so", ".dylib", ".dll", ".tar", ".wasm")


class ShareError(HubError):
    """The artifact lacks what a share record needs."""


@dataclasses.dataclass(frozen=True)
class VramEstimate:
    parameters: int
    kv_cache: int
    activations: int
    context_window_size: int
    prefill_chunk_size: int
    model_dtype: str

    @property
    def total(self) -> int:
        return self.parameters + self.kv_cache + self.activations

    @property
    def total_mib(self) -> float:
        return round(self.total / 2**20, 2)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total, "total_MiB": self.total_mib}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ShareError(f"{path.name} is missing", path=path, hint="run `personalize verify` on the artifact") from None
    except ValueError as exc:
        raise ShareError(f"{path.name} is not valid JSON: {exc}", path=path,
                         hint="re-create the artifact with `personalize add`") from None


def model_dtype(quantization: str) -> str:
    """The activation/KV dtype a quantization name implies (q4f16_1 -> float16, q0bf16 -> bfloat16)."""
    if "bf16" in quantization:
        return "bfloat16"
    if "f32" in quantization:
        return "float32"
    return "float16"


def parameter_bytes(tensor_cache: dict) -> int:
    total = 0
    for shard in tensor_cache.get("records", []):
        for rec in shard.get("records", []):
            size = DTYPE_BYTES.get(rec["dtype"])
            if size is None:
                raise ShareError(f"unknown dtype {rec['dtype']!r} for {rec['name']} in tensor-cache.json",
                                 hint="re-create the artifact with `personalize add`")
            total += math.prod(int(d) for d in rec["shape"]) * size
    return total


def estimate_vram(chat_config: dict, tensor_cache: dict) -> VramEstimate:
    mc = chat_config.get("model_config") or {}

    def field(key: str, default: Any = None) -> Any:
        value = mc.get(key, chat_config.get(key, default))
        if value is None:
            raise ShareError(f"mlc-chat-config.json has no {key}", hint="re-create the artifact with `personalize add`")
        return value

    dtype = model_dtype(chat_config.get("quantization", ""))
    width = DTYPE_BYTES[dtype]
    heads = int(field("num_attention_heads"))
    hidden = int(field("hidden_size"))
    kv_heads = int(mc.get("num_key_value_heads") or heads)
    head_dim = int(mc.get("head_dim") or hidden // heads)
    context = int(chat_config.get("context_window_size", -1))
    if context <= 0:
        context = int(chat_config.get("sliding_window_size", -1))
    if context <= 0:
        context = int(field("context_window_size"))
    chunk = int(chat_config.get("prefill_chunk_size", -1))
    if chunk <= 0:
        chunk = int(mc.get("prefill_chunk_size") or min(context, 2048))
    kv = int(field("num_hidden_layers")) * 2 * kv_heads * head_dim * context * width
    acts = chunk * (3 * hidden + 2 * int(field("intermediate_size"))) * width + int(field("vocab_size")) * 4
    return VramEstimate(parameters=parameter_bytes(tensor_cache), kv_cache=kv, activations=acts,
                        context_window_size=context, prefill_chunk_size=chunk, model_dtype=dtype)


def system_lib_name(model_type: str, quantization: str, library_key: str) -> str:
    """MLC's system-lib prefix convention: `{model_type}_{quantization}_{hash}`, '-' -> '_'."""
    return f"{model_type}_{quantization}_{library_key}".replace("-", "_")


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def webgpu_wasm_name(model_name: str, quantization: str, prefill_chunk_size: int) -> str:
    """WebLLM's prebuilt naming: `{Model}-{quant}_cs{chunk}-webgpu.wasm` (e.g. ..._cs1k-webgpu.wasm)."""
    return f"{model_name}-{quantization}_cs{_k(prefill_chunk_size)}-webgpu.wasm"


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
    chat_config = _read_json(artifact_dir / "mlc-chat-config.json")
    tensor_cache = _read_json(artifact_dir / "tensor-cache.json")
    lineage = read_lineage(artifact_dir)
    quant = chat_config.get("quantization") or lineage.get("quantization")
    model_type = chat_config.get("model_type") or lineage.get("model_type")
    library_key = lineage.get("library_key")
    if not (quant and model_type and library_key):
        raise ShareError("the artifact does not record its quantization, model_type and library_key",
                         path=artifact_dir / "personalize.json", hint="re-create it with `personalize add`")
    vram = estimate_vram(chat_config, tensor_cache)
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
