"""Qwen2 / Qwen2.5: fused c_attn weight *and* bias, concrete vocab dimension."""

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
from .llama import COMMON_KEYS, heads


@dataclass(frozen=True)
class Qwen2(Architecture):
    model_type: str = "qwen2"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps", "num_key_value_heads"], path)
        h, kv, hd = heads(hf)
        if hd * h != int(hf["hidden_size"]):
            raise ArchitectureError("qwen2 needs head_dim * num_attention_heads == hidden_size", path=path)
        theta, scaling = rope_from_hf(hf)
        if scaling is not None:
            raise ArchitectureError(f"qwen2 rope_scaling {scaling.get('rope_type')!r} is not supported", path=path,
                                    hint="remove rope_scaling (YaRN) from config.json for contexts <= 32K")
        if hf.get("use_sliding_window"):
            raise ArchitectureError("qwen2 with use_sliding_window=true is not supported", path=path)
        ctx = context_window(hf, path)
        mc = {
            "hidden_act": str(hf.get("hidden_act", "silu")),
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "num_attention_heads": h,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "num_key_value_heads": kv,
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "rope_theta": theta,
            "vocab_size": int(hf["vocab_size"]),
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "context_window_size": ctx,
            "prefill_chunk_size": min(ctx, 8192),
            "tensor_parallel_shards": 1,
            "head_dim": hd,
            "dtype": "float32",
            "max_batch_size": 1,
        }
        if mc["hidden_act"] != "silu":
            raise ArchitectureError(f"qwen2 with hidden_act={mc['hidden_act']} is not supported", path=path)
        compiled = compiled_subset(mc, ("tensor_parallel_shards", "max_batch_size", "dtype"))
        return LibraryConfig("qwen2", mc, compiled, symbolic_vocab=False)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        tied = config.model_config["tie_word_embeddings"]
        return standard_layout(config, "rope_theta", qkv="c_attn", qkv_bias=True, head="tied" if tied else "own")
