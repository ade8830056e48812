"""Phi-3 / Phi-3.5 / Phi-4-mini, as MLC's `model/phi3/` names and computes it.

The checkpoint already fuses `qkv_proj` and `gate_up_proj`; MLC renames the modules
(`transformer.h.{i}.mixer.qkv_proj`, `...mixer.out_proj`, `...ln`, `transformer.embd`). RoPE may
be `longrope` (`su` in older configs) with per-dimension long/short factors, and Phi-4-mini rotates
only `partial_rotary_factor` of each head. The embedding's vocab dimension is concrete, lm_head's
symbolic. A tied checkpoint (Phi-4-mini) still gets an `lm_head`, filled from the embedding: MLC's
prebuilt Phi-4-mini library takes one (tests/data/prebuilt/metadata/Phi-4-mini-instruct-*.json),
and a library compiled tied simply does not read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import (
    Architecture,
    ArchitectureError,
    LibraryConfig,
    compiled_subset,
    require,
    standard_layout,
)
from .layout import DecoderLayout, RopeLayout
from .llama import COMMON_KEYS, heads

PHI3_LAYER_ORDER = ("input_norm", "attn", "mlp", "post_attn_norm")


def phi3_rope_scaling(hf: dict[str, Any], max_pos: int, original: int, path: str) -> dict[str, Any] | None:
    """MLC's Phi3Config.__post_init__: `su` is `longrope`; rope_type and both lengths are added.

    transformers 5 may write `rope_parameters` with `rope_type` only; MLC would drop that scaling
    silently, we read it (the same deliberate difference as for rope_theta).
    """
    scaling = hf.get("rope_scaling")
    if scaling is None and (hf.get("rope_parameters") or {}).get("rope_type") not in (None, "default"):
        scaling = {k: v for k, v in hf["rope_parameters"].items() if k not in ("rope_theta", "partial_rotary_factor")}
    if not scaling:
        return None
    scaling = dict(scaling)
    if "type" not in scaling and "rope_type" in scaling:
        scaling["type"] = scaling["rope_type"]
    if scaling.get("type") in (None, "default"):
        return None
    if scaling["type"] == "su":
        scaling["type"] = "longrope"
    if scaling["type"] != "longrope":
        raise ArchitectureError(f"phi3 rope_scaling type {scaling['type']!r} is not supported (MLC's phi3 supports "
                                "longrope/su)", path=path)
    if not original:
        raise ArchitectureError("phi3 longrope needs original_max_position_embeddings", path=path)
    scaling["rope_type"] = scaling["type"]
    scaling["max_position_embeddings"], scaling["original_max_position_embeddings"] = max_pos, original
    return scaling


@dataclass(frozen=True)
class Phi3(Architecture):
    model_type: str = "phi3"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps", "max_position_embeddings"], path)
        h, kv, hd = heads(hf)
        if hd * h != int(hf["hidden_size"]):
            raise ArchitectureError("phi3 needs head_dim * num_attention_heads == hidden_size", path=path)
        if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ArchitectureError("phi3 with a non-silu activation or biases is not supported (MLC's phi3 has "
                                    "neither)", path=path)
        params = hf.get("rope_parameters") or {}
        theta = hf.get("rope_theta", params.get("rope_theta", 10000))
        max_pos = int(hf["max_position_embeddings"])
        original = int(hf.get("original_max_position_embeddings")
                       or (hf.get("rope_scaling") or params).get("original_max_position_embeddings") or 0)
        mc = {  # MLC's Phi3Config fields, in declaration order
            "model_type": "phi3",
            "hidden_size": int(hf["hidden_size"]),
            "vocab_size": int(hf["vocab_size"]),
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "num_attention_heads": h,
            "intermediate_size": int(hf["intermediate_size"]),
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "num_key_value_heads": kv,
            "max_position_embeddings": max_pos,
            "position_embedding_base": theta,
            "rope_scaling": phi3_rope_scaling(hf, max_pos, original, path),
            "original_max_position_embeddings": original,
            "context_window_size": max_pos,
            "prefill_chunk_size": min(max_pos, 8192),
            "head_dim": hd,
            "tensor_parallel_shards": 1,
            "max_batch_size": 1,
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "partial_rotary_factor": float(hf.get("partial_rotary_factor", 1.0)),
        }
        compiled = compiled_subset(mc, ("vocab_size", "tensor_parallel_shards", "max_batch_size"))
        return LibraryConfig("phi3", mc, compiled, symbolic_vocab=False)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        c = config.model_config
        scaling = c["rope_scaling"]
        ext = tuple(scaling["long_factor"]) + tuple(scaling["short_factor"]) if scaling else None
        rope = RopeLayout(c["position_embedding_base"], scaling, ext, int(c["head_dim"] * c["partial_rotary_factor"]))
        return standard_layout(config, "position_embedding_base", rope=rope, prefix="transformer", embed="embd",
                               layer_list="h", attn="mixer", o_proj="out_proj", input_norm="ln",
                               layer_order=PHI3_LAYER_ORDER, hf_fused=True, head_vocab_symbolic=True,
                               head="copy_embedding" if c["tie_word_embeddings"] else "own")

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        hf = super().hf_view(model_config)
        hf["max_position_embeddings"] = model_config["max_position_embeddings"]
        hf["rope_theta"] = model_config["position_embedding_base"]
        return hf
