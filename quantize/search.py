"""Other per-group scales in MLC's group-quantization format: `scales="mse"` and `scales="range"`.

MLC's runtime only computes `(code - max_int) * scale` with code = the stored `bits`-bit field
(mlc-format.md §3.1; mlc-llm's convert_uint_to_float masks with 2**bits - 1), so any per-group
scale (stored in the model dtype) and any codes 0..2**bits-1 run on the same compiled library.
MLC's converter takes scale = absmax/max_int and codes 0..2*max_int (15 is never written).

"mse": a smaller scale clamps the group's extreme values to ±max_int*scale but rounds the others
on a finer grid, which lowers the squared error (SmolLM2, int4: -12% in total; int3: -28%).
Candidates model_dtype(absmax/max_int * f), f < 1: a coarse grid, then REFINE_ROUNDS finer ones
around each group's best, scored by the squared error of the nearest codes (fp32).
Measured end to end (SmolLM2 q4f16_1 gate): clipping the extremes HURTS the model (mean KL 1.11
vs 1.05, perplexity 52 vs 44); the largest weights of a group matter more than their share of
the squared error.

"range": the smallest scale that clips nothing when the top code 2**bits-1 (+max_int+1, e.g. +8
for int4) is used too: scale = max(max(w)/(max_int+1), -min(w)/max_int). Every group whose
largest magnitude is positive gets a finer grid (up to 8/7 for int4) and no value is clipped.
Measured end to end: mean KL 0.95 vs 1.05, perplexity 39 vs 44, at less CPU than "mlc".

Both then recompute, for their scale and for MLC's own (absmax/max_int), the nearest codes and
the group's squared error, and keep theirs only if it is lower: at MLC's scale the nearest codes
are at least as close as MLC's (which rounds after an fp16 division), so no group ends up worse
than MLC's. Zero groups keep scale 0.

Errors are measured against the weight cast to the model dtype (what MLC quantizes) with the
dequantized value `(code - max_int) * scale` taken exactly, as our compiled CPU kernels compute
it (fp32). Kernels that round that product to fp16 move each value by at most half an fp16 ulp,
the same for every mode and far below a quantization step.

Speed: rows go in chunks (CHUNK_ELEMENTS) through group.py's worker pool with preallocated
buffers; each chunk is laid out [group_size, groups], so the per-group sums reduce contiguous
rows (3-10x faster in torch than reducing a short last axis) and packing ors whole rows.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from quantize.group import _NUMPY, _TORCH, NonFiniteRows, _run_chunks, as_torch
from quantize.schemes import codes_per_word, num_groups, zero_point

CHUNK_ELEMENTS = 1 << 17  # per chunk: ~0.5 MiB fp32 buffers, L2-resident
# Candidate scales are absmax/max_int * f: COARSE_STEPS factors from LOWEST_FACTOR up to (not
# including) 1, then REFINE_ROUNDS rounds of best ± half the previous step, per group; f = 1
# (MLC's scale) is evaluated besides. Measured on SmolLM2 and random matrices: these 10
# candidates lose 0.05% (int4) of the error reduction of a 32-step uniform grid at 1/3 its
# cost; int3 gains from going lower than 0.7.
COARSE_STEPS = 6
REFINE_ROUNDS = 2
LOWEST_FACTOR = {7: 0.70, 3: 0.60}  # by max_int (int4, int3)
# The searched scale replaces MLC's only if its error is lower by more than fp32 summation noise,
# so that no group ends up worse than MLC's in exact arithmetic.
SELECT_MARGIN = 1e-5


def search_quantize(
    source: np.ndarray,
    model_dtype: str,
    bits: int,
    group_size: int,
    transpose: bool = False,
    mode: str = "mse",
) -> tuple[np.ndarray, np.ndarray]:
    """Like group.group_quantize (same shapes, dtypes, layouts, NonFiniteRows), with other scales:
    mode "mse" searches clipping scales, "range" takes the smallest scale that clips nothing
    with codes up to 2**bits - 1 (module docstring)."""
    if mode not in ("mse", "range"):
        raise ValueError(f"unknown search mode {mode!r}")
    if source.ndim != 2:
        raise ValueError(f"group quantization needs a 2-D weight, got shape {source.shape}")
    source = np.ascontiguousarray(source)
    n_rows, k = source.shape
    spec = _Spec(n_rows, k, group_size, bits, _TORCH[model_dtype], mode)
    words = spec.k_pad // spec.epu
    q_weight = np.empty((words, n_rows) if transpose else (n_rows, words), np.uint32)
    q_scale = np.empty((spec.groups, n_rows) if transpose else (n_rows, spec.groups), _NUMPY[model_dtype])
    src = as_torch(source)
    qw = torch.from_numpy(q_weight.view(np.int32))
    qs = as_torch(q_scale)
    workspaces = threading.local()

    def run(r0: int) -> None:
        ws = getattr(workspaces, "ws", None)
        if ws is None:
            ws = workspaces.ws = _Workspace(spec)
        n = min(spec.chunk_rows, n_rows - r0)
        packed, scale = _quantize_chunk(spec, ws, src[r0 : r0 + n])  # [words/group, n, groups], [n, groups]
        if transpose:
            qw[:, r0 : r0 + n] = packed.permute(2, 0, 1).reshape(words, n)
            qs[:, r0 : r0 + n] = scale.T
        else:
            qw[r0 : r0 + n] = packed.permute(1, 2, 0).reshape(n, words)
            qs[r0 : r0 + n] = scale

    _run_chunks(run, range(0, n_rows, spec.chunk_rows))
    return q_weight, q_scale


class _Spec:
    """What does not change from chunk to chunk."""

    def __init__(self, n_rows: int, k: int, gs: int, bits: int, model_dtype: torch.dtype, mode: str):
        self.k, self.gs, self.bits, self.model_dtype, self.mode = k, gs, bits, model_dtype, mode
        self.groups = num_groups(k, gs)
        self.k_pad = self.groups * gs
        self.epu = codes_per_word(bits)
        self.max_int = zero_point(bits)
        self.chunk_rows = max(1, min(n_rows, CHUNK_ELEMENTS // self.k_pad))


class _Workspace:
    """One worker's chunk buffers, allocated once: fresh large tensors per op would cost page
    faults that take longer than the arithmetic."""

    def __init__(self, spec: _Spec):
        size = spec.chunk_rows * spec.k_pad
        self.f32 = [torch.empty(size) for _ in range(5)]
        self.codes = torch.empty(size, dtype=torch.int32)
        self.words = torch.empty(size // spec.epu, dtype=torch.int32)
        self.model = torch.zeros((spec.chunk_rows, spec.k_pad), dtype=spec.model_dtype)  # pad lanes stay 0

    def lanes(self, i: int, gs: int, m: int) -> torch.Tensor:
        """Buffer i as [gs, m]."""
        return self.f32[i][: gs * m].view(gs, m)


def _quantize_chunk(spec: _Spec, ws: _Workspace, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed words [gs/epu, n, groups] (int32 view of uint32) and scales [n, groups] (model dtype)."""
    n, k = rows.shape
    gs, groups, mi = spec.gs, spec.groups, spec.max_int
    m = n * groups
    model = ws.model[:n]
    model[:, :k].copy_(rows)  # the cast MLC makes first: RNE, overflow -> inf
    x = ws.lanes(0, gs, m)  # [lane, row * group]: per-group sums reduce whole rows
    x.view(gs, n, groups).copy_(model.view(n, groups, gs).permute(2, 0, 1))
    t, r = ws.lanes(1, gs, m), ws.lanes(2, gs, m)
    absmax = torch.abs(x, out=t).amax(dim=0)  # NaN propagates (aminmax is 20x slower here)
    if not bool(torch.isfinite(absmax).all()):
        bad = int((~torch.isfinite(absmax)).nonzero()[0, 0])
        raise NonFiniteRows(bad // groups)
    base = absmax / mi  # fp32; rounded to the model dtype it is MLC's scale
    mlc_scale = _stored(base, spec.model_dtype)
    if spec.mode == "range":
        top = mi + 1
        best_scale = _range_scale(x, base, mi, spec.model_dtype)
    else:
        top = mi
        best_scale = _search(x, base, mi, spec.model_dtype, t, r)
    codes_s, err_s = _nearest_codes(x, best_scale, mi, top, ws.lanes(3, gs, m), t)
    codes_m, err_m = _nearest_codes(x, mlc_scale, mi, mi, ws.lanes(4, gs, m), t)
    take = err_s < err_m * (1 - SELECT_MARGIN)
    torch.where(take, codes_s, codes_m, out=codes_s).add_(mi)
    codes = ws.codes[: gs * m].view(gs, n, groups)
    codes.view(gs, m).copy_(codes_s)
    if k != spec.k_pad:
        codes[k - (groups - 1) * gs :, :, groups - 1] = 0  # tail lanes are zero bits, as MLC writes them
    scale = torch.where(take, best_scale, mlc_scale).view(n, groups).to(spec.model_dtype)
    return _pack_rows(codes, spec, ws.words), scale


def _stored(scale: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """`scale` rounded to the model dtype (as stored in q_scale), back in fp32."""
    return scale if model_dtype == torch.float32 else scale.to(model_dtype).float()


def _search(x: torch.Tensor, base: torch.Tensor, mi: int, model_dtype: torch.dtype,
            t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per group, the candidate scale with the smallest squared error (fp32 estimate): a coarse
    grid of factors on absmax/max_int, then rounds of finer ones around each group's best."""
    lowest = LOWEST_FACTOR[mi]
    step = (1.0 - lowest) / COARSE_STEPS
    factors = torch.arange(COARSE_STEPS, dtype=torch.float32).mul_(step).add_(lowest)[:, None].expand(-1, base.numel())
    best_f, best_err = _score(x, base, factors, mi, model_dtype, t, r)
    for _ in range(REFINE_ROUNDS):
        step /= 2
        around = torch.stack([best_f - step, best_f + step])
        f, err = _score(x, base, around, mi, model_dtype, t, r)
        better = err < best_err
        best_f = torch.where(better, f, best_f)
        best_err = torch.where(better, err, best_err)
    return _stored(base * best_f, model_dtype)


def _score(x, base, factors, mi, model_dtype, t, r):
    """The best of candidate factors [C, groups] per group, and its error (a zero or NaN scale never wins)."""
    scales = _stored(base * factors, model_dtype)
    inv = scales.reciprocal()  # a zero scale gives inf, then NaN errors
    errs = torch.empty_like(scales)
    for c in range(scales.shape[0]):
        torch.mul(x, inv[c], out=t)  # x / s
        torch.round(t, out=r)
        r.clamp_(-mi, mi).sub_(t).square_()
        torch.sum(r, dim=0, out=errs[c])
    errs.mul_(scales.square()).nan_to_num_(nan=float("inf"))
    err, idx = errs.min(dim=0)
    return factors.gather(0, idx[None])[0], err


def _range_scale(x: torch.Tensor, base: torch.Tensor, mi: int, model_dtype: torch.dtype) -> torch.Tensor:
    """The smallest stored scale with max(x) <= (mi+1)*scale and -min(x) <= mi*scale, i.e. the whole
    code range 0..2**bits-1 is used and nothing clips; never above MLC's absmax/mi."""
    need = torch.minimum(torch.maximum(x.amax(dim=0) / (mi + 1), x.amin(dim=0).neg_() / mi), base)
    scale = _stored(need, model_dtype)
    # rounding to the model dtype may have gone below `need`: one ulp up (relative ulp <= 2**-mantissa)
    up = _stored(need * (1 + _ULP[model_dtype]), model_dtype)
    return torch.where(scale < need, up, scale)


_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}


def _nearest_codes(x: torch.Tensor, scale: torch.Tensor, mi: int, top: int, codes: torch.Tensor,
                   tmp: torch.Tensor):
    """Codes in -mi..top nearest to x/scale (into `codes`, fp32) and each group's squared error of
    the dequantized values code*scale (exact in fp32 for fp16/bf16 scales: a 3-bit integer times
    an 8/11-bit mantissa). A zero scale gives code 0 and the error of the zero group."""
    inv = torch.where(scale > 0, scale.reciprocal(), 0.0)
    torch.mul(x, inv, out=codes).round_().clamp_(-mi, top)
    torch.mul(codes, scale, out=tmp)
    torch.sub(x, tmp, out=tmp).square_()
    return codes, tmp.sum(dim=0)


def _pack_rows(codes: torch.Tensor, spec: _Spec, out: torch.Tensor) -> torch.Tensor:
    """Pack codes [gs, n, groups] into words [gs/epu, n, groups], element r of a word at bits r*bits."""
    epu = spec.epu
    lanes = codes.view(spec.gs // epu, epu, *codes.shape[1:])
    words = out[: codes.numel() // epu].view(spec.gs // epu, *codes.shape[1:])
    words.copy_(lanes[:, 0])
    for r in range(1, epu):
        words.bitwise_or_(lanes[:, r].bitwise_left_shift(r * spec.bits))
    return words
