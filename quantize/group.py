"""MLC's group quantization (GroupQuantize._quantize + pack_weight), fast and bit-exact, on CPU.

The math (mlc-format.md §3.1-3.3), for W[N, K] grouped along K in groups of `gs`:
    scale = model_dtype(max|W[n, group]| / max_int)
    code  = clamp(rint(W / scale + max_int), 0, 2*max_int)   (0/0 -> NaN -> code 0)
fp16 rounds after every op (W/scale, then +max_int); bf16 and fp32 evaluate the expression in
fp32 (TVM's BF16ComputeLegalize) with only the stored scale rounded to the model dtype; in the
bf16 KN layout (q4bf16_0) even the divisor is the unrounded fp32 scale (measured against TVM).
torch's CPU kernels for half compute each op in fp32 and round once to fp16, which equals exact
fp16 arithmetic (fp32 has more than 2*11+2 bits), so `torch.div`/`add_` on half tensors are the
per-op fp16 rounding MLC gets from LLVM/CUDA.

Speed: rows are processed in chunks of about CHUNK_ELEMENTS, so temporaries stay in cache and
memory stays bounded (a few chunk-sized buffers per worker, plus the outputs). Each core runs
its own chunks as a stream of single-threaded torch ops into reused buffers (see _run_chunks).
Two tricks avoid separate passes:
  * |W| max via the bit pattern: clearing the sign bit and taking an integer max is exact for
    floats (and makes NaN/Inf the largest values, which the finiteness check then catches);
  * rint by a magic add: fp16(x + 1024) = 1024 + rint_even(x) for 0 <= x < 1024 (fp32: 2**23),
    so the code is in the low bits of the result's bit pattern and packing is bit shuffling.
The clamp (and NaN fix) is needed only when some scale is zero or subnormal; with a normal scale
|W/scale| <= max_int * (1 + 2**-7), so W/scale + max_int rounds into [0, 2*max_int] by itself.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import torch

from quantize.schemes import codes_per_word, num_groups, num_words, zero_point

CHUNK_ELEMENTS = 1 << 19  # per chunk of rows; a few MiB of temporaries per worker, cache-friendly
WORKERS = 0  # chunk workers; 0 = torch.get_num_threads()

_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
# the integer type with the same width, for bit views
_BITS_TORCH = {2: torch.int16, 4: torch.int32}
_SIGN_CLEAR = {2: 0x7FFF, 4: 0x7FFFFFFF}
_MAGIC = {torch.float16: 1024.0, torch.float32: float(1 << 23)}  # adding it rounds to an integer


class NonFiniteRows(ValueError):
    """Internal: a chunk held NaN/Inf after the cast; carries the first bad row."""

    def __init__(self, row: int):
        super().__init__(row)
        self.row = row


def as_torch(array: np.ndarray) -> torch.Tensor:
    """A zero-copy torch view of a C-contiguous numpy array (bfloat16 through an int16 view)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only inputs (mmap) are only ever read
        if array.dtype == _NUMPY["bfloat16"]:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def numpy_dtype(model_dtype: str) -> np.dtype:
    return _NUMPY[model_dtype]


def cast_finite(source: np.ndarray, model_dtype: str) -> np.ndarray:
    """`source` cast to the model dtype (RNE, overflow -> inf; no copy if it already is),
    chunk by chunk; raises NonFiniteRows if a value is NaN/Inf."""
    source = np.ascontiguousarray(source)
    target = _NUMPY[model_dtype]
    same = source.dtype == target
    out = source if same else np.empty(source.shape, target)
    src = as_torch(source).reshape(-1)
    dst = as_torch(out).reshape(-1)
    row_size = max(1, int(np.prod(source.shape[1:], dtype=np.int64))) if source.ndim > 1 else max(1, source.size)

    def run(start: int) -> None:
        chunk = dst[start : start + CHUNK_ELEMENTS]
        if not same:
            chunk.copy_(src[start : start + CHUNK_ELEMENTS])
        if not bool(torch.isfinite(chunk).all()):
            bad = start + int((~torch.isfinite(chunk)).nonzero()[0, 0])
            raise NonFiniteRows(bad // row_size)

    _run_chunks(run, range(0, src.numel(), CHUNK_ELEMENTS))
    return out


def _max_abs(x: torch.Tensor, groups: int, gs: int, bits_buf: torch.Tensor) -> torch.Tensor:
    """max |x| per group, exactly, via the sign-cleared bit pattern (rows x groups, x's dtype)."""
    ibits = _BITS_TORCH[x.element_size()]
    n = x.shape[0]
    torch.bitwise_and(x.view(ibits), _SIGN_CLEAR[x.element_size()], out=bits_buf)
    return bits_buf.view(n, groups, gs).amax(dim=-1).view(x.dtype)


@dataclass(frozen=True)
class _Plan:
    """Everything about one weight's quantization that does not change from chunk to chunk."""

    n_rows: int
    k: int
    bits: int
    group_size: int
    model_dtype: torch.dtype
    transpose: bool

    @property
    def epu(self) -> int:
        return codes_per_word(self.bits)

    @property
    def max_int(self) -> int:
        return zero_point(self.bits)

    @property
    def groups(self) -> int:
        return num_groups(self.k, self.group_size)

    @property
    def k_pad(self) -> int:
        return self.groups * self.group_size

    @property
    def words(self) -> int:
        return num_words(self.k, self.bits, self.group_size)

    @property
    def work_dtype(self) -> torch.dtype:
        # fp16 works in fp16 (per-op rounding); bf16 and fp32 evaluate in fp32
        return torch.float16 if self.model_dtype == torch.float16 else torch.float32

    @property
    def chunk_rows(self) -> int:
        return max(1, min(self.n_rows, CHUNK_ELEMENTS // self.k_pad))


class _Workspace:
    """One worker's reusable chunk buffers (a few chunk-sized tensors, allocated once)."""

    def __init__(self, plan: _Plan, needs_cast: bool):
        rows, k_pad = plan.chunk_rows, plan.k_pad
        self.x = torch.zeros((rows, k_pad), dtype=plan.model_dtype) if needs_cast else None  # pads stay 0
        self.w = torch.empty((rows, k_pad), dtype=plan.work_dtype)
        self.bits = torch.empty((rows, k_pad), dtype=_BITS_TORCH[plan.model_dtype.itemsize])
        int4 = plan.bits == 4
        fold = int4 and plan.work_dtype == torch.float16
        self.pack = torch.empty((rows, k_pad // 2), dtype=torch.uint8) if int4 and not fold else None
        self.fold = torch.empty((rows, k_pad // 4), dtype=torch.int64) if fold else None
        self.fold_tmp = torch.empty((rows, k_pad // 4), dtype=torch.int64) if fold else None
        self.kn = torch.empty((rows, plan.words), dtype=torch.int32) if plan.transpose else None


def group_quantize(
    source: np.ndarray,
    model_dtype: str,
    bits: int,
    group_size: int,
    transpose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize source[N, K] (fp32/fp16/bf16, cast here to `model_dtype`) to (q_weight, q_scale).

    NK: q_weight [N, ceil(K/gs)*gs/epu] uint32, q_scale [N, ceil(K/gs)] model dtype; with
    `transpose` both come back transposed (KN). Raises NonFiniteRows if a value is NaN/Inf
    after the cast (source NaN/Inf stays non-finite, and fp16 overflow becomes Inf).
    """
    if source.ndim != 2:
        raise ValueError(f"group quantization needs a 2-D weight, got shape {source.shape}")
    source = np.ascontiguousarray(source)
    plan = _Plan(source.shape[0], source.shape[1], bits, group_size, _TORCH[model_dtype], transpose)
    out_shape = (plan.words, plan.n_rows) if transpose else (plan.n_rows, plan.words)
    q_weight = np.empty(out_shape, np.uint32)
    q_scale = np.empty((plan.groups, plan.n_rows) if transpose else (plan.n_rows, plan.groups), _NUMPY[model_dtype])
    src = as_torch(source)
    qw = torch.from_numpy(q_weight.view(np.int32))
    qs = as_torch(q_scale)
    needs_cast = src.dtype != plan.model_dtype or plan.k_pad != plan.k
    starts = range(0, plan.n_rows, plan.chunk_rows)

    workspaces = threading.local()

    def run(r0: int) -> None:
        ws = getattr(workspaces, "ws", None)
        if ws is None:
            ws = workspaces.ws = _Workspace(plan, needs_cast)
        _quantize_rows(plan, ws, src, qw, qs, r0)

    _run_chunks(run, starts)
    return q_weight, q_scale


def _run_chunks(run, starts: range) -> None:
    """run(start) for every chunk, on one single-threaded torch stream per core.

    Chunks are independent; this beats torch's intra-op parallelism, whose OpenMP threads
    spin at a barrier after every op (on a busy 2-core machine that wasted up to 10x CPU).
    torch is set to one intra-op thread (process-wide) while the workers run.
    An exception in any chunk is raised here.
    """
    workers = min(len(starts), _worker_count())
    if workers <= 1:
        for start in starts:
            run(start)
        return
    with _single_threaded_torch(), ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(run, start) for start in starts]
        try:
            for fut in futures:
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _worker_count() -> int:
    return max(1, WORKERS or torch.get_num_threads())


@contextlib.contextmanager
def _single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _quantize_rows(plan: _Plan, ws: _Workspace, src: torch.Tensor, qw: torch.Tensor, qs: torch.Tensor, r0: int) -> None:
    """Quantize rows [r0, r0 + chunk_rows) of src into the q_weight/q_scale views qw/qs."""
    n = min(plan.chunk_rows, plan.n_rows - r0)
    k, k_pad, groups, gs, max_int = plan.k, plan.k_pad, plan.groups, plan.group_size, plan.max_int
    if ws.x is not None:
        x = ws.x[:n]
        x[:, :k].copy_(src[r0 : r0 + n])  # the cast: RNE, overflow -> inf
    else:
        x = src[r0 : r0 + n]
    max_abs = _max_abs(x, groups, gs, ws.bits[:n])
    if not bool(torch.isfinite(max_abs).all()):
        bad = (~torch.isfinite(max_abs)).any(dim=1).nonzero()[0, 0].item()
        raise NonFiniteRows(r0 + int(bad))
    scale = torch.div(max_abs, max_int)  # rounded to the model dtype: the stored q_scale

    w = ws.w[:n]
    wg = w.view(n, groups, gs)
    if plan.work_dtype == plan.model_dtype:
        divisor = scale  # fp16/fp32: the rounded scale is the divisor
        torch.div(x.view(n, groups, gs), divisor.unsqueeze(-1), out=wg)
    else:
        # bf16 evaluates in fp32. NK divides by the stored (bf16-rounded) scale; in KN the
        # scale stage is transposed, not an output, and TVM keeps it in fp32 unrounded.
        divisor = torch.div(max_abs.float(), max_int) if plan.transpose else scale.float()
        w.copy_(x)  # bf16 -> fp32 is exact
        wg.div_(divisor.unsqueeze(-1))
    w.add_(max_int)
    if bool((divisor < torch.finfo(divisor.dtype).tiny).any()):
        # zero or subnormal scale: W/scale can exceed max_int, and 0/0 is NaN (MLC: code 0)
        w.nan_to_num_(nan=0.0)
        w.clamp_(0, 2 * max_int)
    magic = _MAGIC[plan.work_dtype]
    w.add_(magic)
    if k_pad != k:
        w[:, k:] = magic  # tail lanes encode code 0

    if plan.transpose:
        qs[:, r0 : r0 + n] = scale.T
        out = ws.kn[:n]
    else:
        qs[r0 : r0 + n] = scale
        out = qw[r0 : r0 + n]
    _pack(w, plan.bits, plan.epu, out, ws)
    if plan.transpose:
        qw[:, r0 : r0 + n] = out.T


def _pack(w: torch.Tensor, bits: int, epu: int, out: torch.Tensor, ws: _Workspace) -> None:
    """Pack the codes (the low bits of each magic-added value) into int32 words, LSB first."""
    n, k_pad = w.shape
    if bits == 4 and w.dtype == torch.float16:
        # four fp16 lanes per int64, each 0x6400 + code: keep the codes, then fold lanes at bits
        # 0/16/32/48 down to 0/4/8/12 with two shift-ors; the low int16 holds 4 packed codes
        # (vectorized int64 ops; ~35% faster than byte-wise shuffling)
        t, tmp = ws.fold[:n], ws.fold_tmp[:n]
        torch.bitwise_and(w.view(torch.int64), 0x000F000F000F000F, out=t)
        torch.bitwise_right_shift(t, 12, out=tmp)
        t.bitwise_or_(tmp)
        torch.bitwise_right_shift(t, 24, out=tmp)
        t.bitwise_or_(tmp)
        out.view(torch.int16).view(n, k_pad // 4).copy_(t.view(torch.int16).view(n, k_pad // 4, 4)[..., 0])
        return
    size = w.element_size()
    lanes = w.view(torch.uint8).view(n, k_pad, size)[..., 0]  # little-endian: the code is byte 0
    if bits == 4:
        # two codes per byte, four bytes per little-endian word: element r lands at bits 4r
        pairs = lanes.unflatten(1, (k_pad // 2, 2))
        hi = ws.pack[:n]
        torch.bitwise_left_shift(pairs[..., 1], 4, out=hi)
        torch.bitwise_or(hi, pairs[..., 0], out=out.view(torch.uint8).view(n, k_pad // 2))
        return
    # generic (int3: 10 codes of 3 bits per word, the top 2 bits stay 0)
    codes = lanes.unflatten(1, (k_pad // epu, epu))
    out.copy_(codes[..., 0])
    for r in range(1, epu):
        out.bitwise_or_(codes[..., r].to(torch.int32).bitwise_left_shift_(r * bits))
