"""The fixed decoder graph in `tvm.relax.frontend.nn`, built from an architecture's DecoderLayout.

Module attribute paths spell the library parameter names (`model.layers.0.self_attn.qkv_proj.q_weight`),
so `export_tvm` yields exactly the artifact's parameter list. Quantized weights are dequantized
inside the graph: on CPU by the hand-scheduled kernels in `cpu_kernels` (float32 activations), on
CUDA by a dequantize+matmul PrimFunc that dlight's GPU rules schedule (model-dtype activations).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from personalize.arch import LibraryConfig, get_architecture
from personalize.arch.layout import DecoderLayout
from quantize.schemes import Scheme

from .cpu_kernels import WeightFormat, linear_kernel, rms_norm_kernel
from .longrope import use_longrope


class GraphOptions:
    """Target-dependent choices: activation dtype and which linear implementation to use."""

    def __init__(self, scheme: Scheme, target: tvm.target.Target):
        self.scheme = scheme
        self.target = target
        self.is_cpu = target.kind.name == "llvm"
        # float32 activations on CPU for every scheme (tvm-notes Q5); the model dtype on GPU, as MLC.
        self.act_dtype = "float32" if self.is_cpu else scheme.model_dtype

    def weight_format(self, role: str) -> WeightFormat:
        s = self.scheme
        if not s.quantizes(role):
            return WeightFormat("dense", s.model_dtype)
        layout = "KN" if s.transposes(role) else "NK"
        return WeightFormat("group", s.model_dtype, s.bits, s.group_size, layout)


def _dequant_expr(fmt: WeightFormat, qw, qs, n, k, dtype: str):
    """Element (n, k) of a group-quantized weight: (code - max_int) * scale, in `dtype`."""
    epu = fmt.epu
    if fmt.layout == "KN":
        word, scale = qw[k // epu, n], qs[k // fmt.group_size, n]
    else:
        word, scale = qw[n, k // epu], qs[n, k // fmt.group_size]
    shift = (k % epu).astype("uint32") * tirx.const(fmt.bits, "uint32")
    code = tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const((1 << fmt.bits) - 1, "uint32"))
    return (code.astype(dtype) - tirx.const(fmt.max_int, dtype)) * scale.astype(dtype)


class Linear(nn.Module):
    """A Linear [out, in] stored as the scheme says (dense `weight`, or `q_weight` + `q_scale`)."""

    def __init__(self, in_features: int, out_features, role: str, opts: GraphOptions, bias: bool = False):
        self.in_features, self.out_features = in_features, out_features
        self.opts = opts
        self.fmt = opts.weight_format(role)
        fmt, k = self.fmt, in_features
        if fmt.kind == "dense":
            self.weight = nn.Parameter((out_features, k), fmt.dtype)
        elif fmt.layout == "KN":
            self.q_weight = nn.Parameter((fmt.words(k), out_features), "uint32")
            self.q_scale = nn.Parameter((fmt.groups(k), out_features), fmt.dtype)
        else:
            self.q_weight = nn.Parameter((out_features, fmt.words(k)), "uint32")
            self.q_scale = nn.Parameter((out_features, fmt.groups(k)), fmt.dtype)
        self.bias = nn.Parameter((out_features,), opts.scheme.model_dtype) if bias else None

    def weights(self) -> list[Tensor]:
        return [self.weight] if self.fmt.kind == "dense" else [self.q_weight, self.q_scale]

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weights(), self.fmt, self.in_features, self.opts)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y


def linear(x: Tensor, weights: list[Tensor], fmt: WeightFormat, k: int, opts: GraphOptions) -> Tensor:
    """x [..., K] -> [..., N] against a (possibly quantized) weight [N, K]."""
    lead = list(x.shape[:-1])
    # N from the parameter itself, so a symbolic vocab_size stays the parameter's own variable.
    n = weights[0].shape[1] if fmt.kind == "group" and fmt.layout == "KN" else weights[0].shape[0]
    if opts.is_cpu:
        x2 = op.reshape(x, (-1, k)) if len(lead) != 1 else x
        m = x2.shape[0]
        y = op.tensor_ir_op(linear_kernel(fmt, k), "linear_" + fmt.kind, [x2, *weights],
                            Tensor.placeholder((m, n), "float32"))
        return op.reshape(y, (*lead, n)) if len(lead) != 1 else y
    return op.tensor_expr_op(_gpu_linear_te(fmt, k, opts.act_dtype), "dequantize_matmul" if fmt.kind == "group"
                             else "matmul", [x, *weights])


def _gpu_linear_te(fmt: WeightFormat, k: int, dtype: str):
    """One PrimFunc: a dequantize block then the matmul (the shape dlight's GEMV/Matmul rules expect)."""

    def f(x, *w):
        if fmt.kind == "dense":
            (wt,) = w
            n = wt.shape[0]
            deq = te.compute((n, k), lambda i, j: wt[i, j].astype(dtype), name="cast_weight")
        else:
            qw, qs = w
            n = qw.shape[1] if fmt.layout == "KN" else qw.shape[0]
            deq = te.compute((n, k), lambda i, j: _dequant_expr(fmt, qw, qs, i, j, dtype), name="dequantize")
        r = te.reduce_axis((0, k), name="k")
        *lead, _ = x.shape
        if len(lead) == 2:
            return te.compute((lead[0], lead[1], n), lambda b, s, j: te.sum(x[b, s, r] * deq[j, r], axis=r),
                              name="matmul")
        return te.compute((lead[0], n), lambda s, j: te.sum(x[s, r] * deq[j, r], axis=r), name="matmul")

    return f


class Embedding(nn.Module):
    """Token embedding [vocab, hidden]; group-quantized rows are always NK. Also the tied lm_head."""

    def __init__(self, vocab, hidden: int, opts: GraphOptions):
        self.vocab, self.hidden, self.opts = vocab, hidden, opts
        self.fmt = opts.weight_format("embedding")
        if self.fmt.kind == "dense":
            self.weight = nn.Parameter((vocab, hidden), self.fmt.dtype)
        else:
            self.q_weight = nn.Parameter((vocab, self.fmt.words(hidden)), "uint32")
            self.q_scale = nn.Parameter((vocab, self.fmt.groups(hidden)), self.fmt.dtype)

    def weights(self) -> list[Tensor]:
        return [self.weight] if self.fmt.kind == "dense" else [self.q_weight, self.q_scale]

    def forward(self, input_ids: Tensor) -> Tensor:
        fmt, hidden, dtype = self.fmt, self.hidden, self.opts.act_dtype

        def gather(ids, *w):
            if fmt.kind == "dense":
                (wt,) = w
                return te.compute((ids.shape[0], hidden), lambda s, h: wt[ids[s], h].astype(dtype), name="embed")
            qw, qs = w
            return te.compute((ids.shape[0], hidden),
                              lambda s, h: _dequant_expr(fmt, qw, qs, ids[s], h, dtype), name="embed")

        return op.tensor_expr_op(gather, "embed", [input_ids, *self.weights()])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weights(), self.fmt, self.hidden, self.opts)


class RMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float, opts: GraphOptions):
        self.weight = nn.Parameter((hidden,), opts.scheme.model_dtype)
        self.eps = eps
        self.hidden = hidden
        self.is_cpu = opts.is_cpu

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_cpu:
            return op.rms_norm(x, self.weight.astype(x.dtype), axes=[-1], epsilon=self.eps)
        lead = list(x.shape[:-1])
        x2 = op.reshape(x, (-1, self.hidden))
        y = op.tensor_ir_op(rms_norm_kernel(self.hidden, self.eps, self.weight.dtype), "rms_norm_cpu",
                            [x2, self.weight], Tensor.placeholder(x2.shape, "float32"))
        return op.reshape(y, (*lead, self.hidden))


class Attention(nn.Module):
    """Self-attention as the layout names it: fused (qkv_proj / c_attn) or separate q/k/v projections,
    optional per-head q/k RMSNorm, then the paged KV cache (which applies RoPE)."""

    def __init__(self, lay: DecoderLayout, opts: GraphOptions):
        self.h, self.kv, self.d = lay.heads, lay.kv_heads, lay.head_dim
        self.lay = lay
        rows = (self.h * self.d, self.kv * self.d, self.kv * self.d)
        if lay.qkv is None:
            self.q_proj, self.k_proj, self.v_proj = (Linear(lay.hidden, n, "linear", opts, bias=lay.qkv_bias)
                                                     for n in rows)
        else:
            setattr(self, lay.qkv, Linear(lay.hidden, sum(rows), "linear", opts, bias=lay.qkv_bias))
        setattr(self, lay.o_proj, Linear(self.h * self.d, lay.hidden, "linear", opts, bias=lay.o_bias))
        if lay.qk_norm:
            self.q_norm = RMSNorm(self.d, lay.norm_eps, opts)
            self.k_norm = RMSNorm(self.d, lay.norm_eps, opts)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        h, kv, d, lay = self.h, self.kv, self.d, self.lay
        if lay.qkv is None:
            parts = [op.reshape(proj(x), (b, s, n, d))
                     for proj, n in ((self.q_proj, h), (self.k_proj, kv), (self.v_proj, kv))]
        else:
            qkv = op.reshape(getattr(self, lay.qkv)(x), (b, s, h + 2 * kv, d))
            parts = list(op.split(qkv, [h, h + kv], axis=2)) if lay.qk_norm else [qkv]
        if lay.qk_norm:
            parts = [self.q_norm(parts[0]), self.k_norm(parts[1]), parts[2]]
        qkv = parts[0] if len(parts) == 1 else op.concat(parts, dim=2)
        o = kv_cache.attention_with_fused_qkv(layer_id, qkv, h, sm_scale=lay.softmax_scale)
        return getattr(self, lay.o_proj)(op.reshape(o, (b, s, h * d)))


class MLP(nn.Module):
    def __init__(self, lay: DecoderLayout, opts: GraphOptions):
        self.inter = lay.intermediate
        self.activation = lay.activation
        self.gate_up_proj = Linear(lay.hidden, 2 * self.inter, "linear", opts)
        self.down_proj = Linear(self.inter, lay.hidden, "linear", opts)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        act = op.silu(gate) if self.activation == "silu" else op.gelu(gate, approximate="tanh")
        return self.down_proj(act * up)


# Layer part -> the module's attribute name (for the parts whose name does not vary).
_NORM_NAMES = {"pre_ffn_norm": "pre_feedforward_layernorm", "post_ffn_norm": "post_feedforward_layernorm"}


class DecoderLayer(nn.Module):
    """Pre-norm residual block; with sandwich norms (gemma2/3) each branch output is normed too."""

    def __init__(self, lay: DecoderLayout, opts: GraphOptions):
        self.lay = lay
        names = {"attn": lay.attn, "mlp": "mlp", "input_norm": lay.input_norm,
                 "post_attn_norm": lay.post_attn_norm, **_NORM_NAMES}
        self.parts = {}
        for part in lay.layer_order:  # declaration order = parameter order
            module = (Attention(lay, opts) if part == "attn" else MLP(lay, opts) if part == "mlp"
                      else RMSNorm(lay.hidden, lay.norm_eps, opts))
            setattr(self, names[part], module)
            self.parts[part] = names[part]

    def _part(self, part: str) -> nn.Module:
        return getattr(self, self.parts[part])

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        attn = self._part("attn")(self._part("input_norm")(x), kv_cache, layer_id)
        if self.lay.sandwich_norms:
            x = x + self._part("post_attn_norm")(attn)
            return x + self._part("post_ffn_norm")(self._part("mlp")(self._part("pre_ffn_norm")(x)))
        x = x + attn
        return x + self._part("mlp")(self._part("post_attn_norm")(x))


class DecoderModel(nn.Module):
    def __init__(self, lay: DecoderLayout, opts: GraphOptions):
        self.lay = lay
        vocab = "vocab_size" if lay.embed_vocab_symbolic else lay.vocab
        setattr(self, lay.embed, Embedding(vocab, lay.hidden, opts))
        setattr(self, lay.layer_list, nn.ModuleList([DecoderLayer(lay, opts) for _ in range(lay.layers)]))
        self.norm = RMSNorm(lay.hidden, lay.norm_eps, opts)

    @property
    def embedding(self) -> Embedding:
        return getattr(self, self.lay.embed)

    def forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        if self.lay.embed_scale is not None:
            x = x * self.lay.embed_scale
        for i, layer in enumerate(getattr(self, self.lay.layer_list)):
            x = layer(x, kv_cache, i)
        return self.norm(x)


class Scope(nn.Module):
    """An empty module, so a decoder stack can sit under a dotted prefix (language_model.model)."""


class CausalLM(nn.Module):
    """The exported model: embed, prefill, decode, batch_prefill, create_paged_kv_cache.

    Everything architecture-specific comes from the architecture's DecoderLayout.
    """

    def __init__(self, config: LibraryConfig, opts: GraphOptions):
        lay = get_architecture(config.model_type).layout(config)
        self.lay = lay
        *outer, last = lay.prefix.split(".")
        holder: nn.Module = self
        for name in outer:
            setattr(holder, name, Scope())
            holder = getattr(holder, name)
        setattr(holder, last, DecoderModel(lay, opts))  # model.* / transformer.* / language_model.model.*
        if lay.head != "tied":
            self.lm_head = Linear(lay.hidden, "vocab_size" if lay.head_vocab_symbolic else lay.vocab, "lm_head", opts)
        self.opts = opts
        self.hidden = lay.hidden

    @property
    def stack(self) -> DecoderModel:
        node: nn.Module = self
        for name in self.lay.prefix.split("."):
            node = getattr(node, name)
        return node

    def _logits(self, h: Tensor) -> Tensor:
        logits = self.stack.embedding.lm_head_forward(h) if self.lay.head == "tied" else self.lm_head(h)
        logits = logits if logits.dtype == "float32" else logits.astype("float32")
        cap = self.lay.final_softcap
        return logits if cap is None else op.tanh(logits / cap) * cap

    def embed(self, input_ids: Tensor):
        return self.stack.embedding(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        h = self.stack(input_embed, paged_kv_cache)

        def last(x):
            b, s, d = x.shape
            return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index_last_token")

        return self._logits(op.tensor_expr_op(last, "index_last_token", [h])), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.stack(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        h = op.take(self.stack(input_embeds, paged_kv_cache), logit_positions, axis=1)
        return self._logits(h), paged_kv_cache

    def create_paged_kv_cache(self, max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                              prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                              support_sliding_window: tirx.Var) -> PagedKVCache:
        lay, rope = self.lay, self.lay.rope
        ext = rx.const(np.array(rope.ext_factors, "float32")) if rope.ext_factors else rx.prim_value(0)
        with use_longrope((rope.scaling or {}).get("rope_type") == "longrope"):
            return TIRPagedKVCache(
                attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
                prefill_chunk_size=prefill_chunk_size, page_size=page_size,
                support_sliding_window=support_sliding_window,
                layer_partition=rx.ShapeExpr([0, lay.layers]), num_hidden_layers=lay.layers,
                num_attention_heads=lay.heads, num_key_value_heads=lay.kv_heads, qk_head_dim=lay.head_dim,
                v_head_dim=lay.head_dim, mla_original_qk_head_dim=0, mla_original_v_head_dim=0,
                rope_mode=RopeMode.NORMAL, rope_scale=1, rope_theta=rope.theta, rope_scaling=dict(rope.scaling or {}),
                rope_ext_factors=ext, rotary_dim=rope.rotary_dim or lay.head_dim, enable_disaggregation=False,
                dtype=self.opts.act_dtype, target=self.opts.target)

    def get_default_spec(self) -> dict:
        dt, hd = self.opts.act_dtype, self.hidden
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", hd], dt), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, hd], dt), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", hd], dt),
                              "logit_positions": nn.spec.Tensor(["num_logits"], "int32"),
                              "paged_kv_cache": kv, "$": packed},
            "create_paged_kv_cache": {"max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
                                      "page_size": int, "support_sliding_window": int,
                                      "$": {"param_mode": "none", "effect_mode": "none"}},
        }
