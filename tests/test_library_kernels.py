"""The hand-written CPU kernels against numpy, one PrimFunc at a time (decode m=1 and prefill tiles).

Fast (each kernel compiles in about a second); the whole-model exactness checks are in test_runtime.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from personalize.library.build import make_target
from personalize.library.cpu_kernels import MI, WeightFormat, linear_kernel, rms_norm_kernel
from tests.oracles import dequantize_nk

RNG = np.random.default_rng(7)


def compiled(prim_func):
    mod = tvm.IRModule({"main": prim_func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, make_target("llvm"))["main"]


def tensor(a):
    return tvm.runtime.tensor(a, tvm.cpu())


def rel_err(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# m: decode (1), a partial prefill tile (MI + 1), full tiles (2 * MI); n: not a multiple of the 4-row tasks
@pytest.mark.parametrize("m", [1, MI + 1, 2 * MI])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_q4_nk_linear(m, scale_dtype):
    k, n = 96, 10
    fmt = WeightFormat("group", scale_dtype, 4, 32, "NK")
    qw = RNG.integers(0, 2**32, (n, fmt.words(k)), dtype=np.uint64).astype(np.uint32)
    qs = (RNG.random((n, fmt.groups(k))) * 0.1 + 0.01).astype(scale_dtype)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    y = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    compiled(linear_kernel(fmt, k))(tensor(x), tensor(qw), tensor(qs), y)
    assert rel_err(y.numpy(), x @ dequantize_nk(qw, qs, k).T) < 1e-5


@pytest.mark.parametrize("m", [1, MI + 1, 2 * MI])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dense_linear(m, dtype):
    k, n = 80, 7
    w = RNG.standard_normal((n, k)).astype(dtype)
    x = RNG.standard_normal((m, k)).astype(np.float32)
    y = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    compiled(linear_kernel(WeightFormat("dense", dtype), k))(tensor(x), tensor(w), y)
    assert rel_err(y.numpy(), x @ w.astype(np.float32).T) < 1e-5


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_rms_norm(m, dtype):
    hidden, eps = 48, 1e-5
    x = RNG.standard_normal((m, hidden)).astype(np.float32)
    w = RNG.standard_normal(hidden).astype(dtype)
    y = tvm.runtime.empty((m, hidden), "float32", tvm.cpu())
    compiled(rms_norm_kernel(hidden, eps, dtype))(tensor(x), tensor(w), y)
    ref = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w.astype(np.float32)
    assert rel_err(y.numpy(), ref) < 1e-5
