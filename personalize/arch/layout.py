"""The decoder layout: what the parameter list and the Relax graph are both built from.

An architecture turns a LibraryConfig into one `DecoderLayout`; `decoder.decoder_params` reads it
for the converter's parameter list and `personalize.library.model.CausalLM` reads it for the graph,
so names, fusions, norms and the compiled-in constants live in one place per architecture and no
graph code asks which model_type it is building.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Which sub-modules a decoder layer holds, in the order MLC's module declares them (the order of
# the parameter list): llama-like layers declare attention first, phi3's block its input norm first.
LayerPart = Literal["attn", "mlp", "input_norm", "post_attn_norm", "pre_ffn_norm", "post_ffn_norm"]

LLAMA_LAYER_ORDER: tuple[LayerPart, ...] = ("attn", "mlp", "input_norm", "post_attn_norm")


@dataclass(frozen=True)
class RopeLayout:
    """RoPE as compiled into the KV cache: base, scaling (TVM's rope_scaling dict), rotary width."""

    theta: float
    scaling: dict[str, Any] | None = None
    ext_factors: tuple[float, ...] | None = None  # longrope: long_factor + short_factor
    rotary_dim: int | None = None  # None: the whole head


@dataclass(frozen=True)
class DecoderLayout:
    """One pre-norm decoder (embedding, N layers, final norm, head) as MLC's module spells it.

    Names are the library's module names; the HF side is always the transformers layout
    (`model.embed_tokens`, `model.layers.{i}.self_attn.q_proj`, ...).
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    norm_eps: float
    vocab: int
    rope: RopeLayout
    # library module names
    prefix: str = "model"  # module path of the decoder stack (phi3: transformer)
    embed: str = "embed_tokens"
    layer_list: str = "layers"
    attn: str = "self_attn"
    qkv: str | None = "qkv_proj"  # fused q,k,v projection; None: separate q_proj, k_proj, v_proj
    o_proj: str = "o_proj"
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"
    layer_order: tuple[LayerPart, ...] = LLAMA_LAYER_ORDER
    # structure
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k (qwen3, gemma3)
    sandwich_norms: bool = False  # gemma2/3: norm after attention and after the MLP, plus pre_feedforward
    hf_fused: bool = False  # the checkpoint already holds qkv_proj and gate_up_proj (phi3)
    norm_transform: Literal["none", "add_one"] = "none"  # gemma stores 1 + w (MLC's loader adds it)
    activation: Literal["silu", "gelu_tanh"] = "silu"
    embed_scale: float | None = None  # gemma: embeddings times sqrt(hidden), in the graph
    attn_scale: float | None = None  # softmax scale; None: head_dim ** -0.5
    final_softcap: float | None = None  # logits = cap * tanh(logits / cap)
    # head: "own" = lm_head from HF lm_head; "tied" = none, logits from the embedding;
    # "copy_embedding" = an lm_head parameter filled from HF's embedding (a tied checkpoint on a
    # library compiled with its own head, as MLC's Phi-4-mini library is)
    head: Literal["own", "tied", "copy_embedding"] = "own"
    embed_vocab_symbolic: bool = True
    head_vocab_symbolic: bool = True
    # MLC's per-layer sliding-window pattern (gemma3), recorded; our graph attends to the whole context
    # and build.context_limits caps that context at the window, which is exact within it
    sliding_layers: tuple[bool, ...] = field(default=())

    @property
    def softmax_scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

    def lib(self, *parts: str) -> str:
        """A library name under the decoder stack: lib("norm", "weight") -> model.norm.weight."""
        return ".".join((self.prefix,) + parts)

    def layer(self, i: int, *parts: str) -> str:
        return ".".join((self.prefix, self.layer_list, str(i)) + parts)
