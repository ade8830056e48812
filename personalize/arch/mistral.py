"""Mistral: the llama layout with an always-present lm_head and an optional sliding window."""

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
class Mistral(Architecture):
    model_type: str = "mistral"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps"], path)
        if hf.get("tie_word_embeddings"):
            raise ArchitectureError("mistral with tied embeddings is not supported (MLC's mistral always has "
                                    "lm_head)", path=path, hint="untie the embeddings or convert as llama")
        h, kv, hd = heads(hf)
        theta, scaling = rope_from_hf(hf)
        if scaling is not None:
            raise ArchitectureError("mistral with rope_scaling is not supported", path=path)
        sliding = hf.get("sliding_window")
        sliding = -1 if sliding in (None, 0) else int(sliding)
        ctx = context_window(hf, path) if sliding == -1 else -1
        chunk = min([x for x in (sliding, ctx) if x != -1] + [8192])
        mc = {
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "num_attention_heads": h,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "vocab_size": int(hf["vocab_size"]),
            "position_embedding_base": theta,
            "num_key_value_heads": kv,
            "head_dim": hd,
            "context_window_size": ctx,
            "sliding_window_size": sliding,
            "prefill_chunk_size": chunk,
            "attention_sink_size": 4,
            "tensor_parallel_shards": 1,
            "max_batch_size": 1,
        }
        compiled = compiled_subset(mc, ("vocab_size", "tensor_parallel_shards", "max_batch_size"))
        return LibraryConfig("mistral", mc, compiled, symbolic_vocab=True)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        return standard_layout(config, "position_embedding_base", head="own")  # MLC's mistral always has lm_head

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        hf = super().hf_view(model_config)
        hf["rope_theta"] = model_config["position_embedding_base"]
        sliding = model_config.get("sliding_window_size")
        hf["sliding_window"] = None if sliding in (None, -1) else sliding
        return hf
