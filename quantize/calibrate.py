"""Calibrated rounding in MLC's unchanged group-quantization format (q4f16_1, q4f32_1, q3f16_1, ...).

The format is fixed by the prebuilt libraries: per row, groups of `gs` consecutive input columns
share one scale in the model dtype, and every kernel decodes `(code - max_int) * scale` with code
the stored `bits`-bit field. Only the choice of codes and scales is ours. MLC's converter takes
scale = absmax/max_int and the nearest codes 0..2*max_int; here both are chosen to minimise the
error of the layer's OUTPUT on calibration activations X (rows = tokens), i.e.

    || X (W - Q)^T ||^2 = sum_rows (w - q)^T H (w - q),      H = X^T X  (K x K)

GPTQ (Frantar et al., 2022) with the fixed group layout: columns are quantized left to right in
their natural order (no act-order: reordering would mix groups), each column's rounding error is
pushed onto the not-yet-quantized columns through the Cholesky factor of H^-1, and a group's scale
is chosen when the sweep reaches the group, from the error-updated weights, by an activation-
weighted search: the candidate that minimises sum_k H_kk (w_k - q_k)^2 over the group. Candidates
cover the full code range 0..2**bits-1 (the top code, +max_int+1, which MLC never writes but every
MLC dequantizer decodes; quantize/search.py's "range" mode uses it too) and clipping factors.

Pure math on numpy/torch arrays (leaf package): the activations come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantize.schemes import codes_per_word, num_groups, zero_point

_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY_SCALE = {"float16": np.float16, "float32": np.float32}

# Candidate scales, as factors on the "range" scale (max over the group of max(x)/(mi+1), -min(x)/mi):
# 1.0 clips nothing; smaller ones clip the extremes for a finer grid. Measured on SmolLM2 (q4):
# clipping below ~0.8 never wins once the error is activation-weighted.
SCALE_FACTORS = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.8)
DAMP = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ's percdamp)
BLOCK = 128  # columns per lazy batch update (a multiple of both group sizes is not needed)


@dataclass
class Calibrated:
    """One weight's codes and scales, before packing: codes [N, K] in 0..2**bits-1 (uint8),
    scales [N, groups] in the model dtype. Dequantizes to (codes - max_int) * scales."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        """(code - max_int) * scale in fp32 (exact: a small integer times an fp16/bf16 scale)."""
        mi = zero_point(self.bits)
        s = np.repeat(self.scales.astype(np.float32), self.group_size, axis=1)[:, : self.codes.shape[1]]
        return (self.codes.astype(np.float32) - mi) * s


def model_dtype_values(weight: np.ndarray | torch.Tensor, model_dtype: str) -> torch.Tensor:
    """The weight as MLC quantizes it: cast to the model dtype (RNE), back in fp32."""
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32)) if isinstance(weight, np.ndarray) else weight
    return w.float().to(_TORCH[model_dtype]).float()


def gptq_quantize(weight: np.ndarray | torch.Tensor, hessian: np.ndarray | torch.Tensor | None, model_dtype: str,
                  bits: int, group_size: int, *, damp: float = DAMP, row_weight_diag: torch.Tensor | None = None,
                  factors: tuple[float, ...] = SCALE_FACTORS) -> Calibrated:
    """GPTQ with MLC's fixed groups. `hessian` = X^T X (any positive scale) from the calibration
    inputs of this linear; None means identity (plain rounding with the scale search).

    `row_weight_diag` [N, K] (optional) replaces diag(H) as the per-element weight of the scale
    search (used for the tied embedding, whose rows also serve as looked-up vectors)."""
    w = model_dtype_values(weight, model_dtype)
    n, k = w.shape
    mi = zero_point(bits)
    groups = num_groups(k, group_size)
    if hessian is None:
        h = torch.eye(k, dtype=torch.float64)
    else:
        h = torch.as_tensor(hessian).to(torch.float64).clone()
    diag = torch.diagonal(h)
    dead = diag <= 0
    diag[dead] = 1.0  # an input never active in calibration: no information, plain rounding there
    diag.add_(damp * float(diag.mean()))
    u = _inverse_cholesky_upper(h)
    weight_diag = row_weight_diag if row_weight_diag is not None else torch.diagonal(h).float()[None, :]
    codes = torch.empty((n, k), dtype=torch.uint8)
    scales = torch.empty((n, groups), dtype=torch.float32)
    w = w.clone()
    for b0 in range(0, k, BLOCK):
        b1 = min(k, b0 + BLOCK)
        err = torch.empty((n, b1 - b0))
        for j in range(b0, b1):
            if j % group_size == 0:
                g = j // group_size
                g1 = min(k, j + group_size)
                wd = weight_diag[:, j:g1] if weight_diag.shape[0] > 1 else weight_diag[0, j:g1]
                scales[:, g] = _search_scale(w[:, j:g1], wd, mi, model_dtype, factors)
            s = scales[:, j // group_size]
            inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
            q = torch.clamp(torch.round(w[:, j] * inv), -mi, mi + 1)
            codes[:, j] = (q + mi).to(torch.uint8)
            e = (w[:, j] - q * s) / float(u[j, j])
            err[:, j - b0] = e
            if j + 1 < b1:
                w[:, j + 1 : b1] -= e[:, None] * u[j, j + 1 : b1].float()[None, :]
        if b1 < k:
            w[:, b1:] -= err @ u[b0:b1, b1:].float()
    scale_np = scales.to(_TORCH[model_dtype]).numpy() if model_dtype != "bfloat16" else scales.numpy()
    if model_dtype == "bfloat16":
        import ml_dtypes

        scale_np = scales.numpy().astype(ml_dtypes.bfloat16)
    return Calibrated(codes.numpy(), scale_np, bits, group_size)


def _inverse_cholesky_upper(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (fp64); more damping if H is numerically not positive definite."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    extra = 0.0
    for _ in range(6):
        try:
            lower = torch.linalg.cholesky(h + extra * eye)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
            extra = max(extra * 10, 1e-6 * float(torch.diagonal(h).mean()))
    raise ValueError("calibration Hessian is not positive definite even after damping")


def _search_scale(x: torch.Tensor, weight: torch.Tensor, mi: int, model_dtype: str,
                  factors: tuple[float, ...]) -> torch.Tensor:
    """Per row, the stored scale among the candidates with the smallest weighted squared error of
    the nearest codes in -mi..mi+1. x [N, g] (fp32), weight [g] or [N, g]."""
    hi, lo = x.amax(dim=1).clamp_min(0), (-x.amin(dim=1)).clamp_min(0)
    need = torch.maximum(hi / (mi + 1), lo / mi)
    best_s = _smallest_unclipped(need, hi, lo, mi, model_dtype)
    best_e = _weighted_error(x, best_s, weight, mi)
    for f in factors:
        if f == 1.0:
            continue
        s = _stored(need * f, model_dtype)
        e = _weighted_error(x, s, weight, mi)
        better = e < best_e
        best_s = torch.where(better, s, best_s)
        best_e = torch.where(better, e, best_e)
    return best_s


def _weighted_error(x: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, mi: int) -> torch.Tensor:
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))[:, None]
    q = torch.clamp(torch.round(x * inv), -mi, mi + 1) * s[:, None]
    d = (x - q) ** 2
    return (d * weight).sum(dim=1)


def _stored(s: torch.Tensor, model_dtype: str) -> torch.Tensor:
    return s.to(_TORCH[model_dtype]).float()


def _smallest_unclipped(need: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, mi: int,
                        model_dtype: str) -> torch.Tensor:
    """The stored scale nearest `need`, one ulp up if it would clip: s*(mi+1) >= hi and s*mi >= lo,
    compared exactly (a small integer times an fp16/bf16 value is exact in fp32)."""
    stored = need.to(_TORCH[model_dtype])
    s = stored.float()
    # the next representable value up (positive floats: the bit pattern + 1)
    bits = {"float16": torch.int16, "bfloat16": torch.int16, "float32": torch.int32}[model_dtype]
    up = (stored.view(bits) + 1).view(_TORCH[model_dtype]).float()
    clips = (s * (mi + 1) < hi) | (s * mi < lo)
    return torch.where(clips, up, s)


def rtn_quantize(weight: np.ndarray | torch.Tensor, model_dtype: str, bits: int, group_size: int) -> Calibrated:
    """Plain round-to-nearest with the range scale (no calibration): the baseline GPTQ must beat."""
    return gptq_quantize(weight, None, model_dtype, bits, group_size, damp=0.0, factors=(1.0,))


def output_error(weight: np.ndarray | torch.Tensor, dequantized: np.ndarray, hessian: np.ndarray | torch.Tensor,
                 model_dtype: str) -> float:
    """sum over rows of (w - q)^T H (w - q): the squared output error on the calibration inputs."""
    d = model_dtype_values(weight, model_dtype) - torch.as_tensor(dequantized).float()
    return float(((d @ torch.as_tensor(hessian).float()) * d).double().sum())


def concat_rows(parts: list[Calibrated]) -> Calibrated:
    """Fused weights (qkv, gate_up) are their sources stacked by rows; groups run along K, so
    quantizing each source on its own and stacking is the same as quantizing the fused weight."""
    return Calibrated(np.concatenate([p.codes for p in parts]), np.concatenate([p.scales for p in parts]),
                      parts[0].bits, parts[0].group_size)


def pack(cal: Calibrated, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(q_weight uint32, q_scale) in MLC's layout: codes LSB first, `32 // bits` per word, the tail
    lanes of a last partial group zero bits (as MLC writes them); KN layouts transpose both."""
    bits, gs = cal.bits, cal.group_size
    n, k = cal.codes.shape
    epu = codes_per_word(bits)
    k_pad = num_groups(k, gs) * gs
    codes = np.zeros((n, k_pad), np.uint32)
    codes[:, :k] = cal.codes
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    q = np.bitwise_or.reduce(codes.reshape(n, -1, epu) << shifts, axis=2).astype(np.uint32)
    scales = np.ascontiguousarray(cal.scales)
    if transpose:
        return np.ascontiguousarray(q.T), np.ascontiguousarray(scales.T)
    return q, scales
