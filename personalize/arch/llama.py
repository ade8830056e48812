"""Llama (2, 3, 3.x with llama3 rope scaling, SmolLM2, TinyLlama) and the shared decoder layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantize.spec import SourceParam

from .base import Architecture, ArchitectureError, LibraryConfig, context_window, require, rope_from_hf

COMMON_KEYS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size"]


def heads(hf: dict[str, Any]) -> tuple[int, int, int]:
    h = int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or h)
    hd = int(hf.get("head_dim") or hf["hidden_size"] // h)
    if h % kv:
        raise ArchitectureError(f"num_attention_heads {h} is not a multiple of num_key_value_heads {kv}")
    return h, kv, hd


def decoder_params(config: LibraryConfig, qkv: str, qkv_bias: bool, lm_head: bool) -> list[SourceParam]:
    """The llama-family parameter list, in the library's (module definition) order."""
    c = config.model_config
    hidden, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    h, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    vocab = c["vocab_size"]
    vdim = "vocab_size" if config.symbolic_vocab else vocab
    out: list[SourceParam] = [
        SourceParam("model.embed_tokens.weight", (vocab, hidden), ("model.embed_tokens.weight",),
                    "embedding", (vdim, hidden)),
    ]
    for i in range(layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        out.append(SourceParam(f"{a}.{qkv}.weight", ((h + 2 * kv) * hd, hidden),
                               (f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"), "linear",
                               source_rows=(h * hd, kv * hd, kv * hd)))
        if qkv_bias:
            out.append(SourceParam(f"{a}.{qkv}.bias", ((h + 2 * kv) * hd,),
                                   (f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"), "bias",
                                   source_rows=(h * hd, kv * hd, kv * hd)))
        out.append(SourceParam(f"{a}.o_proj.weight", (hidden, h * hd), (f"{a}.o_proj.weight",), "linear"))
        out.append(SourceParam(f"{p}.mlp.gate_up_proj.weight", (2 * inter, hidden),
                               (f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"), "linear",
                               source_rows=(inter, inter)))
        out.append(SourceParam(f"{p}.mlp.down_proj.weight", (hidden, inter), (f"{p}.mlp.down_proj.weight",), "linear"))
        out.append(SourceParam(f"{p}.input_layernorm.weight", (hidden,), (f"{p}.input_layernorm.weight",), "norm"))
        out.append(SourceParam(f"{p}.post_attention_layernorm.weight", (hidden,),
                               (f"{p}.post_attention_layernorm.weight",), "norm"))
    out.append(SourceParam("model.norm.weight", (hidden,), ("model.norm.weight",), "norm"))
    if lm_head:
        out.append(SourceParam("lm_head.weight", (vocab, hidden), ("lm_head.weight",), "lm_head", (vdim, hidden)))
    return out


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
        compiled = {k: mc[k] for k in mc if k not in ("vocab_size", "tensor_parallel_shards",
                                                      "pipeline_parallel_stages", "max_batch_size",
                                                      "disaggregation")}
        return LibraryConfig("llama", mc, compiled, symbolic_vocab=True)

    def source_params(self, config: LibraryConfig) -> list[SourceParam]:
        return decoder_params(config, "qkv_proj", qkv_bias=False,
                              lm_head=not config.model_config["tie_word_embeddings"])
