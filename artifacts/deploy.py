"""Deployment facts derived from an artifact's own files: device memory and library names.

Shared by the model card (written at `add`) and `personalize share`, so both print the same values.

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
                + prefill_chunk_size * vocab_size * 4 when the library's vocab dimension is concrete
                (qwen2, phi3, qwen3): MLC's libraries carry `batch_verify`, which returns fp32 logits for
                every token of a chunk, and with a concrete vocab its memory plan reserves them
                statically (Qwen2-0.5B: 622 MB of the 662 MB `batch_verify` entry in the library's
                memory_usage metadata). With a symbolic vocab (llama, mistral, gemma2) the buffer is
                allocated on demand and not part of the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ArtifactError
from .format import MLC_CHAT_CONFIG_JSON
from .tensor_cache import numpy_dtype, parameter_bytes

LOW_RESOURCE_MIB = 2048  # WebLLM marks models that fit in about 2 GB as low_resource_required


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


def model_dtype(quantization: str) -> str:
    """The activation/KV dtype a quantization name implies (q4f16_1 -> float16, q0bf16 -> bfloat16)."""
    if "bf16" in quantization:
        return "bfloat16"
    if "f32" in quantization:
        return "float32"
    return "float16"


def estimate_vram(chat_config: dict, tensor_cache: dict, symbolic_vocab: bool | None = None) -> VramEstimate:
    """`symbolic_vocab`: whether the library leaves the vocab dimension symbolic (default: what MLC's
    prebuilt libraries of this model_type do, from the catalog)."""
    mc = chat_config.get("model_config") or {}
    mc = {**(mc.get("text_config") or {}), **mc}  # gemma3 nests the text model's fields

    def field(key: str, default: Any = None) -> Any:
        value = mc.get(key, chat_config.get(key, default))
        if value is None:
            raise ArtifactError(f"{MLC_CHAT_CONFIG_JSON} has no {key}", hint="re-create the artifact with `personalize add`")
        return value

    dtype = model_dtype(chat_config.get("quantization", ""))
    width = numpy_dtype(dtype).itemsize
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
    if symbolic_vocab is None:
        from catalog import has_symbolic_vocab

        symbolic_vocab = has_symbolic_vocab(str(chat_config.get("model_type")))
    if not symbolic_vocab:
        acts += chunk * int(field("vocab_size")) * 4
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
