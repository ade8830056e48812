"""The converter's parameter list of a `DecoderLayout`: library names, shapes, HF sources, transforms."""

from __future__ import annotations

from quantize.spec import SourceParam

from .layout import DecoderLayout

HF = "model"  # transformers' decoder stack: model.embed_tokens, model.layers.{i}..., model.norm


def decoder_params(lay: DecoderLayout) -> list[SourceParam]:
    """Every unquantized library parameter, in the library's (module declaration) order."""
    hidden, vocab = lay.hidden, lay.vocab
    embed_dim = "vocab_size" if lay.embed_vocab_symbolic else vocab
    out = [SourceParam(lay.lib(lay.embed, "weight"), (vocab, hidden), (f"{HF}.embed_tokens.weight",), "embedding",
                       (embed_dim, hidden))]
    for i in range(lay.layers):
        for part in lay.layer_order:
            out.extend(_layer_part(lay, i, part))
    out.append(_norm(lay, lay.lib("norm", "weight"), f"{HF}.norm.weight", hidden))
    if lay.head != "tied":
        source = "lm_head.weight" if lay.head == "own" else f"{HF}.embed_tokens.weight"
        head_dim = "vocab_size" if lay.head_vocab_symbolic else vocab
        out.append(SourceParam("lm_head.weight", (vocab, hidden), (source,), "lm_head", (head_dim, hidden)))
    return out


def _norm(lay: DecoderLayout, name: str, source: str, size: int) -> SourceParam:
    return SourceParam(name, (size,), (source,), "norm", transform=lay.norm_transform)


def _layer_part(lay: DecoderLayout, i: int, part: str) -> list[SourceParam]:
    hf = f"{HF}.layers.{i}"
    hidden = lay.hidden
    if part == "input_norm":
        return [_norm(lay, lay.layer(i, lay.input_norm, "weight"), f"{hf}.input_layernorm.weight", hidden)]
    if part == "post_attn_norm":
        return [_norm(lay, lay.layer(i, lay.post_attn_norm, "weight"), f"{hf}.post_attention_layernorm.weight",
                      hidden)]
    if part in ("pre_ffn_norm", "post_ffn_norm"):
        name = {"pre_ffn_norm": "pre_feedforward_layernorm", "post_ffn_norm": "post_feedforward_layernorm"}[part]
        return [_norm(lay, lay.layer(i, name, "weight"), f"{hf}.{name}.weight", hidden)]
    if part == "mlp":
        return _mlp(lay, i, hf)
    return _attention(lay, i, hf)


def _attention(lay: DecoderLayout, i: int, hf: str) -> list[SourceParam]:
    h, kv, d, hidden = lay.heads, lay.kv_heads, lay.head_dim, lay.hidden
    a, src = lay.layer(i, lay.attn), f"{hf}.self_attn"
    rows = (h * d, kv * d, kv * d)
    out: list[SourceParam] = []
    if lay.qkv is None:  # separate projections (gemma3)
        for proj, n in zip(("q_proj", "k_proj", "v_proj"), rows):
            out.append(SourceParam(f"{a}.{proj}.weight", (n, hidden), (f"{src}.{proj}.weight",), "linear"))
    elif lay.hf_fused:
        out.append(SourceParam(f"{a}.{lay.qkv}.weight", (sum(rows), hidden), (f"{src}.qkv_proj.weight",), "linear"))
    else:
        out.append(SourceParam(f"{a}.{lay.qkv}.weight", (sum(rows), hidden),
                               tuple(f"{src}.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")), "linear",
                               source_rows=rows))
    if lay.qkv_bias:
        out.append(SourceParam(f"{a}.{lay.qkv}.bias", (sum(rows),),
                               tuple(f"{src}.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")), "bias",
                               source_rows=rows))
    out.append(SourceParam(f"{a}.{lay.o_proj}.weight", (hidden, h * d), (f"{src}.o_proj.weight",), "linear"))
    if lay.o_bias:
        out.append(SourceParam(f"{a}.{lay.o_proj}.bias", (hidden,), (f"{src}.o_proj.bias",), "bias"))
    if lay.qk_norm:
        for n in ("q_norm", "k_norm"):
            out.append(_norm(lay, f"{a}.{n}.weight", f"{src}.{n}.weight", d))
    return out


def _mlp(lay: DecoderLayout, i: int, hf: str) -> list[SourceParam]:
    inter, hidden = lay.intermediate, lay.hidden
    m, src = lay.layer(i, "mlp"), f"{hf}.mlp"
    if lay.hf_fused:
        gate_up = SourceParam(f"{m}.gate_up_proj.weight", (2 * inter, hidden), (f"{src}.gate_up_proj.weight",),
                              "linear")
    else:
        gate_up = SourceParam(f"{m}.gate_up_proj.weight", (2 * inter, hidden),
                              (f"{src}.gate_proj.weight", f"{src}.up_proj.weight"), "linear",
                              source_rows=(inter, inter))
    return [gate_up, SourceParam(f"{m}.down_proj.weight", (hidden, inter), (f"{src}.down_proj.weight",), "linear")]
