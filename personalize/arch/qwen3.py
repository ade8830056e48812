"""Qwen3: qwen2's fused c_attn plus a per-head RMSNorm on q and k, an explicit head_dim and, by
default, no attention bias (MLC's `model/qwen3/qwen3_model.py` and `qwen3_loader.py`)."""

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
class Qwen3(Architecture):
    model_type: str = "qwen3"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps", "num_key_value_heads", "head_dim"], path)
        h, kv, hd = heads(hf)
        theta, scaling = rope_from_hf(hf)
        if scaling is not None:  # MLC's Qwen3Config has no rope_scaling: its library would ignore it
            raise ArchitectureError(f"qwen3 rope_scaling {scaling.get('rope_type')!r} is not supported (MLC's qwen3 "
                                    "library compiles plain RoPE)", path=path,
                                    hint="remove rope_scaling (YaRN) from config.json for contexts within "
                                         "max_position_embeddings")
        if hf.get("use_sliding_window"):
            raise ArchitectureError("qwen3 with use_sliding_window=true is not supported", path=path)
        if str(hf.get("hidden_act", "silu")) not in ("silu", "swish"):
            raise ArchitectureError(f"qwen3 with hidden_act={hf['hidden_act']} is not supported", path=path)
        ctx = context_window(hf, path)
        mc = {  # MLC's Qwen3Config fields, in its declaration order
            "hidden_act": str(hf.get("hidden_act", "silu")),
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "attention_bias": bool(hf.get("attention_bias", False)),
            "num_attention_heads": h,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "num_key_value_heads": kv,
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "rope_theta": theta,
            "vocab_size": int(hf["vocab_size"]),
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "context_window_size": ctx,
            "prefill_chunk_size": min(ctx, 2048),
            "tensor_parallel_shards": 1,
            "head_dim": hd,
            "dtype": "float32",
            "max_batch_size": 1,
            "weight_block_size": None,
        }
        compiled = compiled_subset(mc, ("tensor_parallel_shards", "max_batch_size", "dtype", "weight_block_size"))
        return LibraryConfig("qwen3", mc, compiled, symbolic_vocab=False)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        c = config.model_config
        return standard_layout(config, "rope_theta", qkv="c_attn", qkv_bias=c["attention_bias"],
                               o_bias=c["attention_bias"], qk_norm=True,
                               head="tied" if c["tie_word_embeddings"] else "own")
