"""Gemma 2, as MLC's `model/gemma2/` computes it (which is what its prebuilt libraries run).

MLC's graph: embeddings times sqrt(hidden), GeLU-tanh, four RMSNorms per layer (the norm after
attention and after the MLP on the branch output), final-logit soft-capping, always tied. Its loader
stores every RMSNorm weight as `w + 1`. Where MLC's library departs from transformers we follow MLC,
since that is the library the artifact runs on:
- attention logit soft-capping is not applied (Gemma2Config's own note);
- the softmax scale is head_dim ** -0.5; `query_pre_attn_scalar` is recorded but unused (equal to
  head_dim for gemma-2-2b/9b, not for 27b or 2b-jpn);
- every layer attends to the whole context, and the context is capped at `sliding_window` (4096),
  so the alternating sliding window never slides: exact with transformers within that context.
"""

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

GEMMA_LAYER_ORDER = ("attn", "mlp", "input_norm", "post_attn_norm", "pre_ffn_norm", "post_ffn_norm")


def gemma_activation(hf: dict[str, Any], path: str) -> str:
    act = hf.get("hidden_activation") or hf.get("hidden_act")
    if act not in ("gelu", "gelu_pytorch_tanh"):
        raise ArchitectureError(f"gemma with activation {act!r} is not supported (MLC's gemma computes GeLU-tanh)",
                                path=path, hint="use the config.json of a Gemma checkpoint")
    return act


@dataclass(frozen=True)
class Gemma2(Architecture):
    model_type: str = "gemma2"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        require(hf, COMMON_KEYS + ["rms_norm_eps", "head_dim", "sliding_window"], path)
        if hf.get("attention_bias"):
            raise ArchitectureError("gemma2 with attention_bias is not supported (MLC's gemma has none)", path=path)
        if hf.get("tie_word_embeddings") is False:
            raise ArchitectureError("gemma2 with untied embeddings: MLC's gemma2 library has no lm_head and would "
                                    "drop it", path=path, hint="convert a checkpoint with tied embeddings")
        h, kv, hd = heads(hf)
        theta, scaling = rope_from_hf(hf)
        if scaling is not None:
            raise ArchitectureError(f"gemma2 rope_scaling {scaling.get('rope_type')!r} is not supported", path=path)
        ctx = context_window(hf, path)
        mc = {  # MLC's Gemma2Config (GemmaConfig + its own) fields, in declaration order
            "hidden_size": int(hf["hidden_size"]),
            "intermediate_size": int(hf["intermediate_size"]),
            "attention_bias": False,
            "num_attention_heads": h,
            "num_key_value_heads": kv,
            "head_dim": hd,
            "num_hidden_layers": int(hf["num_hidden_layers"]),
            "rms_norm_eps": float(hf["rms_norm_eps"]),
            "vocab_size": int(hf["vocab_size"]),
            "hidden_activation": gemma_activation(hf, path),
            "position_embedding_base": theta,
            # GemmaConfig sizes the prefill chunk from max_position_embeddings, then Gemma2Config
            # replaces the context window by the sliding window (no sliding attention in MLC)
            "context_window_size": int(hf["sliding_window"]),
            "prefill_chunk_size": min(ctx, 8192),
            "tensor_parallel_shards": 1,
            "max_batch_size": 1,
            "attn_logit_softcapping": hf.get("attn_logit_softcapping"),
            "final_logit_softcapping": hf.get("final_logit_softcapping"),
            "query_pre_attn_scalar": hf.get("query_pre_attn_scalar"),
            "sliding_window": int(hf["sliding_window"]),
        }
        compiled = compiled_subset(mc, ("vocab_size", "tensor_parallel_shards", "max_batch_size"))
        return LibraryConfig("gemma2", mc, compiled, symbolic_vocab=True)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        c = config.model_config
        return standard_layout(config, "position_embedding_base", layer_order=GEMMA_LAYER_ORDER, sandwich_norms=True,
                               norm_transform="add_one", activation="gelu_tanh", embed_scale=c["hidden_size"] ** 0.5,
                               final_softcap=c["final_logit_softcapping"], head="tied")

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        hf = super().hf_view(model_config)
        hf["rope_theta"] = model_config["position_embedding_base"]
        hf["max_position_embeddings"] = model_config["prefill_chunk_size"]  # any value >= the chunk re-derives it
        return hf
