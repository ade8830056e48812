"""The fixed decoder graph (llama, mistral, qwen2) in `tvm.relax.frontend.nn`.

Module attribute paths spell the library parameter names (`model.layers.0.self_attn.qkv_proj.q_weight`),
so `export_tvm` yields exactly the artifact's parameter list. Quantized weights are dequantized
inside the graph: on CPU by the hand-scheduled kernels in `cpu_kernels` (float32 activations), on
CUDA by a dequantize+matmul PrimFunc that dlight's GPU rules schedule (model-dtype activations).
"""

from __future__ import annotations

import tvm
from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from personalize.arch import LibraryConfig
from quantize.schemes import Scheme

from .cpu_kernels import WeightFormat, linear_kernel, rms_norm_kernel


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
    def __init__(self, c: dict, qkv_name: str, qkv_bias: bool, opts: GraphOptions):
        self.h, self.kv, self.d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.qkv_name = qkv_name
        qkv = Linear(c["hidden_size"], (self.h + 2 * self.kv) * self.d, "linear", opts, bias=qkv_bias)
        setattr(self, qkv_name, qkv)  # qkv_proj (llama, mistral) or c_attn (qwen2): the library name
        self.o_proj = Linear(self.h * self.d, c["hidden_size"], "linear", opts)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(getattr(self, self.qkv_name)(x), (b, s, self.h + 2 * self.kv, self.d))
        o = kv_cache.attention_with_fused_qkv(layer_id, qkv, self.h, sm_scale=self.d ** -0.5)
        return self.o_proj(op.reshape(o, (b, s, self.h * self.d)))


class MLP(nn.Module):
    def __init__(self, c: dict, opts: GraphOptions):
        self.inter = c["intermediate_size"]
        self.gate_up_proj = Linear(c["hidden_size"], 2 * self.inter, "linear", opts)
        self.down_proj = Linear(self.inter, c["hidden_size"], "linear", opts)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: dict, qkv_name: str, qkv_bias: bool, opts: GraphOptions):
        self.self_attn = Attention(c, qkv_name, qkv_bias, opts)
        self.mlp = MLP(c, opts)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"], opts)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"], opts)

    def forward(self, x: Tensor, kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv_cache, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, c: dict, vocab, qkv_name: str, qkv_bias: bool, opts: GraphOptions):
        self.embed_tokens = Embedding(vocab, c["hidden_size"], opts)
        self.layers = nn.ModuleList([DecoderLayer(c, qkv_name, qkv_bias, opts)
                                     for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"], opts)

    def forward(self, x: Tensor, kv_cache: PagedKVCache) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, kv_cache, i)
        return self.norm(x)


# Per model_type: fused attention parameter name, whether it has a bias, rope theta key.
GRAPH_LAYOUT = {
    "llama": ("qkv_proj", False, "position_embedding_base"),
    "mistral": ("qkv_proj", False, "position_embedding_base"),
    "qwen2": ("c_attn", True, "rope_theta"),
}


class CausalLM(nn.Module):
    """The exported model: embed, prefill, decode, batch_prefill, create_paged_kv_cache."""

    def __init__(self, config: LibraryConfig, opts: GraphOptions):
        c = config.model_config
        qkv_name, qkv_bias, theta_key = GRAPH_LAYOUT[config.model_type]
        vocab = "vocab_size" if config.symbolic_vocab else config.vocab_size
        self.model = DecoderModel(c, vocab, qkv_name, qkv_bias, opts)
        self.tied = bool(c.get("tie_word_embeddings", False)) and config.model_type != "mistral"
        if not self.tied:
            self.lm_head = Linear(c["hidden_size"], vocab, "lm_head", opts)
        self.opts = opts
        self.hidden = c["hidden_size"]
        self.num_layers = c["num_hidden_layers"]
        self.h, self.kv, self.d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.rope_theta = c[theta_key]
        self.rope_scaling = c.get("rope_scaling") or {}

    def _logits(self, h: Tensor) -> Tensor:
        logits = self.model.embed_tokens.lm_head_forward(h) if self.tied else self.lm_head(h)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def embed(self, input_ids: Tensor):
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        h = self.model(input_embed, paged_kv_cache)

        def last(x):
            b, s, d = x.shape
            return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index_last_token")

        return self._logits(op.tensor_expr_op(last, "index_last_token", [h])), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self._logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        h = op.take(self.model(input_embeds, paged_kv_cache), logit_positions, axis=1)
        return self._logits(h), paged_kv_cache

    def create_paged_kv_cache(self, max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                              prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                              support_sliding_window: tirx.Var) -> PagedKVCache:
        return TIRPagedKVCache(
            attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size, page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, self.num_layers]), num_hidden_layers=self.num_layers,
            num_attention_heads=self.h, num_key_value_heads=self.kv, qk_head_dim=self.d, v_head_dim=self.d,
            mla_original_qk_head_dim=0, mla_original_v_head_dim=0, rope_mode=RopeMode.NORMAL, rope_scale=1,
            rope_theta=self.rope_theta, rope_scaling=dict(self.rope_scaling), rope_ext_factors=rx.prim_value(0),
            rotary_dim=self.d, enable_disaggregation=False, dtype=self.opts.act_dtype, target=self.opts.target)

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
