"""Llama (2, 3, 3.x with llama3 rope scaling, SmolLM2, TinyLlama)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import (
    Architecture,
    ArchitectureError,
    LibraryConfig,
    compiled_subset,
    context_window,
    require,
    rope_from_hf,
    standard_layout,
)
from .layout import DecoderLayout

COMMON_KEYS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size"]


def heads(hf: dict[str, Any]) -> tuple[int, int, int]:
    h = int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or h)
    hd = int(hf.get("head_dim") or hf["hidden_size"] // h)
    if h % kv:
        raise ArchitectureError(f"num_attention_heads {h} is not a multiple of num_key_value_heads {kv}")
    return h, kv, hd


@dataclass(frozen=True)
class Llama(Architecture):
    model_type: str = "llama"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps"], path)
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ArchitectureError("llama with attention_bias/mlp_bias is not supported by the fixed library",
                                    path=path, hint="convert a bias-free llama checkpoint")
        if hf.get("hidden_act", "silu") != "silu":
            raise ArchitectureError(f"llama with hidden_act={hf['hidden_act']} is not supported", path=path)
        h, kv, hd = heads(hf)
        theta, scaling = rope_from_hf(hf)
        if scaling is not None and scaling.get("rope_type") != "llama3":
            raise ArchitectureError(
                f"rope_scaling type {scaling.get('rope_type')!r} is not supported for llama (only 'llama3')",
                path=path, hint="use a model with default or llama3 RoPE")
        ctx = context_window(hf, path)
        mc = {
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "num_attention_heads": h,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "vocab_size": int(hf["vocab_size"]),
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "position_embedding_base": theta,
            "rope_scaling": scaling,
            "context_window_size": ctx,
            "prefill_chunk_size": min(ctx, 8192),
            "num_key_value_heads": kv,
            "head_dim": hd,
            "tensor_parallel_shards": 1,
            "pipeline_parallel_stages": 1,
            "max_batch_size": 1,
            "disaggregation": False,
        }
        compiled = compiled_subset(mc, ("vocab_size", "tensor_parallel_shards", "pipeline_parallel_stages",
                                        "max_batch_size", "disaggregation"))
        return LibraryConfig("llama", mc, compiled, symbolic_vocab=True)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        tied = config.model_config["tie_word_embeddings"]
        return standard_layout(config, "position_embedding_base", head="tied" if tied else "own")

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        hf = super().hf_view(model_config)
        hf["rope_theta"] = model_config["position_embedding_base"]
        return hf
