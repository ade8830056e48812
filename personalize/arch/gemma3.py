"""Gemma 3 text models (`gemma3_text`, e.g. gemma-3-1b-it), as MLC's `model/gemma3/` computes them.

MLC's layout: the decoder under `language_model.model`, separate q/k/v projections, q/k RMSNorm per
head, Gemma's four norms per layer (every norm stored `w + 1` by the loader), GeLU-tanh, embeddings
times sqrt(hidden), softmax scale `query_pre_attn_scalar ** -0.5`, always tied. MLC departs from
transformers in one way we follow, since its library is what the artifact runs on: one RoPE base
(`rope_theta`) for every layer, where transformers gives the sliding layers `rope_local_base_freq`.
MLC marks every `sliding_window_pattern`-th layer global and the others sliding; our library attends
to the whole context instead and caps it at the sliding window, so it is exact within that window.

`model_config` is MLC's Gemma3Config: the text model's fields (and the config.json keys it does not
know, as `kwargs`) nested in `text_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Architecture, ArchitectureError, LibraryConfig, require
from .gemma2 import GEMMA_LAYER_ORDER, gemma_activation
from .layout import DecoderLayout, RopeLayout
from .llama import heads

SLIDING_WINDOW_PATTERN = 6  # a class attribute (not a field) of MLC's Gemma3TextConfig

TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "attention_bias", "num_attention_heads",
               "num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_activation", "position_embedding_base",
               "rope_scaling", "context_window_size", "prefill_chunk_size", "query_pre_attn_scalar",
               "sliding_window_size")
TOP_FIELDS = ("text_config", "vocab_size", "tensor_parallel_shards", "max_batch_size", "context_window_size",
              "sliding_window_size", "prefill_chunk_size", "is_text_model")


def rope_bases(hf: dict[str, Any]) -> tuple[float, float]:
    """(global, local) RoPE bases from the transformers<5 or the per-layer-type transformers>=5 layout."""
    params = hf.get("rope_parameters") or {}
    full, sliding = params.get("full_attention") or params, params.get("sliding_attention") or {}
    theta = hf.get("rope_theta", full.get("rope_theta", 1_000_000))
    local = hf.get("rope_local_base_freq", sliding.get("rope_theta", 10_000))
    return theta, local


@dataclass(frozen=True)
class Gemma3Text(Architecture):
    model_type: str = "gemma3_text"

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        text = hf.get("text_config") if isinstance(hf.get("text_config"), dict) else hf  # re-read chat configs
        require(text, ["hidden_size", "intermediate_size", "num_hidden_layers", "sliding_window"], path)
        if text.get("attention_bias"):
            raise ArchitectureError("gemma3 with attention_bias is not supported (MLC's gemma has none)", path=path)
        if text.get("tie_word_embeddings") is False:
            raise ArchitectureError("gemma3 with untied embeddings: MLC's gemma3 library has no lm_head and would "
                                    "drop it", path=path, hint="convert a checkpoint with tied embeddings")
        scaling = text.get("rope_scaling")
        if scaling not in (None, 0, {}):
            raise ArchitectureError("gemma3 with rope_scaling is not supported (MLC's gemma3 compiles plain RoPE)",
                                    path=path)
        h, kv, hd = heads({"num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, **text})
        theta, _local = rope_bases(text)
        sliding = int(text["sliding_window"])
        chunk = min(131_072, 8192)  # MLC's default context (131072) sizes the chunk, not max_position_embeddings
        known = set(TEXT_FIELDS) | {"rope_theta", "vocab_size", "text_config"}
        text_config = {
            "hidden_size": int(text["hidden_size"]),
            "intermediate_size": int(text["intermediate_size"]),
            "num_hidden_layers": int(text["num_hidden_layers"]),
            "attention_bias": False,
            "num_attention_heads": h,
            "num_key_value_heads": kv,
            "head_dim": hd,
            "rms_norm_eps": float(text.get("rms_norm_eps", 1e-6)),
            "hidden_activation": gemma_activation({"hidden_activation": "gelu_pytorch_tanh", **text}, path),
            "position_embedding_base": theta,
            "rope_scaling": 0,
            "context_window_size": max(sliding, 8192),  # MLC: "sliding window attention ... yet to be supported"
            "prefill_chunk_size": chunk,
            "query_pre_attn_scalar": int(text.get("query_pre_attn_scalar", 256)),
            "sliding_window_size": sliding,
            "kwargs": {k: v for k, v in text.items() if k not in known},
        }
        mc = {
            "text_config": text_config,
            "vocab_size": int(hf.get("vocab_size", text.get("vocab_size", 262_208))),
            "tensor_parallel_shards": 1,
            "max_batch_size": 1,
            "context_window_size": text_config["context_window_size"],
            "sliding_window_size": sliding,
            "prefill_chunk_size": chunk,
            "is_text_model": True,
        }
        # flat, and without text_config.kwargs: config.json's leftovers (transformers_version ...) must
        # not key the library
        compiled = {**{k: v for k, v in text_config.items() if k != "kwargs"},
                    "context_window_size": mc["context_window_size"], "sliding_window_size": sliding,
                    "prefill_chunk_size": chunk}
        return LibraryConfig("gemma3_text", mc, compiled, symbolic_vocab=True)

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        c, t = config.model_config, config.model_config["text_config"]
        return DecoderLayout(
            hidden=t["hidden_size"], intermediate=t["intermediate_size"], layers=t["num_hidden_layers"],
            heads=t["num_attention_heads"], kv_heads=t["num_key_value_heads"], head_dim=t["head_dim"],
            norm_eps=t["rms_norm_eps"], vocab=c["vocab_size"], rope=RopeLayout(t["position_embedding_base"]),
            prefix="language_model.model", qkv=None, qk_norm=True, layer_order=GEMMA_LAYER_ORDER,
            sandwich_norms=True, norm_transform="add_one", activation="gelu_tanh",
            embed_scale=t["hidden_size"] ** 0.5, attn_scale=t["query_pre_attn_scalar"] ** -0.5, head="tied",
            sliding_layers=tuple(bool((i + 1) % SLIDING_WINDOW_PATTERN) for i in range(t["num_hidden_layers"])))

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        text = dict(model_config["text_config"])
        hf = {**text.pop("kwargs", {}), **text, "model_type": self.model_type, "vocab_size": model_config["vocab_size"],
              "rope_theta": text["position_embedding_base"], "sliding_window": text["sliding_window_size"]}
        hf.pop("rope_scaling", None)
        return hf
