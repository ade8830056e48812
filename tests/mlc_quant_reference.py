"""An independent, slow numpy model of MLC LLM's weight math (mlc-format.md §1.4, §3.1-3.3).

Used only by the tests, as the oracle the fast torch implementation must equal bit for bit.
It is written straight from the spec, element-wise in the model dtype, with no shared code.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from tests import oracles

BF16 = np.dtype(ml_dtypes.bfloat16)
NP_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BF16, "float32": np.dtype(np.float32)}


def cast_to_model_dtype(w: np.ndarray, model_dtype: str) -> np.ndarray:
    """MLC's map_func `astype(dtype)`: every cast goes through exact fp32, then one RNE rounding."""
    with np.errstate(over="ignore", invalid="ignore"):
        return w.astype(np.float32).astype(NP_DTYPES[model_dtype])


def quantize_nk(
    w: np.ndarray, bits: int, gs: int, model_dtype: str, kn: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """GroupQuantize._quantize + pack_weight for W[N, K] already in the model dtype.

    Returns the NK-layout arrays; `kn` only changes the bf16 math (see below), the caller
    transposes.
    """
    n, k = w.shape
    epu = 32 // bits
    mi = (1 << (bits - 1)) - 1
    groups = -(-k // gs)
    dt = NP_DTYPES[model_dtype]
    wp = np.zeros((n, groups * gs), dt)
    wp[:, :k] = w
    g = wp.reshape(n, groups, gs)
    absmax = np.abs(g).max(axis=2)  # exact in any dtype; pad lanes are 0 and cannot win
    with np.errstate(all="ignore"):
        if model_dtype == "bfloat16":
            # BF16ComputeLegalize: fp32 expression, only the stored scale is rounded to bf16
            scale32 = absmax.astype(np.float32) / np.float32(mi)
            scale = scale32.astype(dt)
            # In the KN layout `scale` is transposed, so the TE stage that computes it is no
            # longer an output; TVM (0.27, llvm) then keeps it in fp32 and divides by the
            # *unrounded* scale, while the stored q_scale is bf16-rounded (found by
            # test_equals_tvm_compiled_mlc_kernel[q4bf16_0]). NK divides by the stored scale.
            divisor = scale32 if kn else scale.astype(np.float32)
            x = g.astype(np.float32) / divisor[:, :, None]
            x = x + np.float32(mi)
        else:
            # every op rounds to the model dtype (numpy fp16 ops round each result to fp16)
            scale = (absmax / dt.type(mi)).astype(dt)
            x = (g / scale[:, :, None]).astype(dt)
            x = (x + dt.type(mi)).astype(dt)
        r = np.rint(x.astype(np.float64))  # ties-to-even
        r = np.nan_to_num(r, nan=0.0, posinf=np.inf, neginf=-np.inf)
        r = np.clip(r, 0, 2 * mi).astype(np.uint32).reshape(n, groups * gs)
    r[:, k:] = 0  # tail lanes are zero bits, not the zero-point code
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    words = r.reshape(n, -1, epu) << shifts
    q = np.bitwise_or.reduce(words, axis=2).astype(np.uint32)
    return q, scale.astype(dt)


def quantize_reference(w_source: np.ndarray, bits: int, gs: int, model_dtype: str, transpose: bool):
    """Cast, quantize, and (KN layout) transpose both outputs."""
    q, scale = quantize_nk(cast_to_model_dtype(w_source, model_dtype), bits, gs, model_dtype, kn=transpose)
    if transpose:
        return np.ascontiguousarray(q.T), np.ascontiguousarray(scale.T)
    return q, scale


def dequantize_nk(q: np.ndarray, scale: np.ndarray, bits: int, gs: int, k: int) -> np.ndarray:
    """Runtime dequantization `(code - max_int) * scale`, in fp64, for sanity checks (tests/oracles.py)."""
    return oracles.dequantize_nk(q, scale, k, bits=bits, group=gs)
