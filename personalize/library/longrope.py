"""The KV cache's RoPE kernel for `longrope` (Phi-3/3.5/4-mini), as MLC's libraries compute it.

apache-tvm 0.27's `llama_rope_with_position_map` cannot build its longrope variant: its `_rope` helper
tests a TIR buffer with `if ext_factors:`, which TVMScript refuses ("Cannot use and / or / not
operator to Expr"). This is the same kernel with that test written `is not None`: long factors when
the chunk is longer than `original_max_position_embeddings`, short factors otherwise, both scaled
cos/sin from TVM's own `rope_freq_longrope`. `TIRPagedKVCache` picks it up through `use_longrope`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tvm import tirx
from tvm.relax.frontend.nn.llm import kv_cache as tvm_kv_cache
from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func
from tvm.script import tirx as T


def longrope_with_position_map(theta: float, scale: float, head_dim: int, num_q_heads: int, num_kv_heads: int,
                               dtype: str, rope_scaling: dict[str, Any], rotary_dim: int | None = None):
    """`fused_rope_longrope_scaling(qkv, position_map, q, k, v, ext_factors)`; ext = long + short factors."""
    fused_heads = num_q_heads + num_kv_heads * 2
    rotary_dim = rotary_dim or head_dim
    half = rotary_dim // 2
    scale = tirx.const(scale, "float32")
    original = rope_scaling["original_max_position_embeddings"]
    freq = switch_rope_freq_func(rope_scaling)

    def rope(x, s, h, d, pos, factors):
        cos_freq, sin_freq, var_map = freq(pos * scale, d, rotary_dim, theta, "float32", ext_factors=factors)
        cos = cos_freq * x[s, h, d].astype("float32")
        sin = sin_freq * tirx.if_then_else(d < half, -x[s, h, d + half], x[s, h, d - half]).astype("float32")
        expr = (cos + sin).astype(dtype)
        for var, value in var_map.items():
            expr = tirx.Let(var, value, expr)
        return expr

    @T.prim_func(s_tir=True)
    def fused_rope_longrope_scaling(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle,
                                    var_v: T.handle, ext_factors: T.Buffer((rotary_dim,), "float32")):  # type: ignore
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        seq_len = T.int64()
        position_map_elem_offset = T.int64()
        qkv = T.match_buffer(var_qkv, (seq_len, fused_heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, num_q_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, num_kv_heads, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        long_factors = T.decl_buffer((half,), "float32", data=ext_factors.data)
        short_factors = T.decl_buffer((half,), "float32", data=ext_factors.data, elem_offset=half)
        if seq_len > original:
            for iters in T.grid(seq_len, fused_heads, head_dim):
                with T.sblock("llama_fused_rope"):
                    s, h, d = T.axis.remap("SSS", iters)
                    if h < num_q_heads:
                        q[s, h, d] = T.if_then_else(d < rotary_dim,
                                                    rope(qkv, s, h, d, position_map[s], long_factors), qkv[s, h, d])
                    elif h < num_q_heads + num_kv_heads:
                        k[s, h - num_q_heads, d] = T.if_then_else(
                            d < rotary_dim, rope(qkv, s, h, d, position_map[s], long_factors), qkv[s, h, d])
                    else:
                        v[s, h - (num_q_heads + num_kv_heads), d] = qkv[s, h, d]
        else:
            for iters in T.grid(seq_len, fused_heads, head_dim):
                with T.sblock("llama_fused_rope"):
                    s, h, d = T.axis.remap("SSS", iters)
                    if h < num_q_heads:
                        q[s, h, d] = T.if_then_else(d < rotary_dim,
                                                    rope(qkv, s, h, d, position_map[s], short_factors), qkv[s, h, d])
                    elif h < num_q_heads + num_kv_heads:
                        k[s, h - num_q_heads, d] = T.if_then_else(
                            d < rotary_dim, rope(qkv, s, h, d, position_map[s], short_factors), qkv[s, h, d])
                    else:
                        v[s, h - (num_q_heads + num_kv_heads), d] = qkv[s, h, d]

    return fused_rope_longrope_scaling


@contextmanager
def use_longrope(enabled: bool) -> Iterator[None]:
    """While building a TIRPagedKVCache, use this kernel for longrope (TVM's own otherwise)."""
    if not enabled:
        yield
        return
    original = tvm_kv_cache.llama_rope_with_position_map
    tvm_kv_cache.llama_rope_with_position_map = longrope_with_position_map
    try:
        yield
    finally:
        tvm_kv_cache.llama_rope_with_position_map = original
