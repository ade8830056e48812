"""Hand-scheduled CPU kernels: y[m, n] = sum_k x[m, k] * W[n, k] with W dequantized on the fly.

Why hand-written: TVM's default CPU lowering of `matmul(x, permute_dims(dequant(W)))` materializes
the whole dequantized weight on every call, so decode is dominated by weight copies. Here each
parallel task dequantizes R weight rows into a small local buffer (L1-resident) and dots every
activation row against them, so weights are read once per call in their stored (packed) form.
Activations and accumulation are float32 (tvm-notes Q5: float16 arithmetic on CPU is slower).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T


@dataclass(frozen=True)
class WeightFormat:
    """How one weight matrix [N, K] is stored.

    kind "dense": W [N, K] in `dtype`. kind "group": q_weight/q_scale in layout "NK"
    (q_weight [N, words], q_scale [N, groups]) or "KN" (both transposed).
    """

    kind: str
    dtype: str  # dense: weight dtype; group: scale dtype
    bits: int = 0
    group_size: int = 0
    layout: str = "NK"

    @property
    def epu(self) -> int:
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def words(self, k: int) -> int:
        groups = -(-k // self.group_size)
        return groups * self.group_size // self.epu

    def groups(self, k: int) -> int:
        return -(-k // self.group_size)


def _lanes(k: int) -> int:
    for lanes in (16, 8, 4, 2):
        if k % lanes == 0:
            return lanes
    return 1


def linear_kernel(fmt: WeightFormat, k: int, rows: int = 4):
    """A PrimFunc (x [m, K] f32, weights..., y [m, N] f32); m and N are symbolic.

    Each task handles `rows` output features; the last task clamps its row index into range
    (it recomputes and rewrites the final row with the same value), so N need not divide.
    """
    if fmt.kind == "dense":
        return _dense_kernel(fmt.dtype, k, rows)
    return _group_kernel(fmt, k, rows)


def _dense_kernel(wdtype: str, K: int, R: int):
    lanes = _lanes(K)
    KO = K // lanes
    f32 = "float32"

    @T.prim_func(private=True, s_tir=True)
    def dense_linear(var_x: T.handle, var_w: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        N = T.int64()
        x = T.match_buffer(var_x, (m, K), f32)
        W = T.match_buffer(var_w, (N, K), wdtype)
        y = T.match_buffer(var_y, (m, N), f32)
        for no in T.parallel((N + R - 1) // R):
            with T.sblock("dense_linear"):
                acc = T.sblock_alloc_buffer((R, lanes), f32, scope="local")
                for i in range(m):
                    for r in T.unroll(R):
                        for ki in T.vectorized(lanes):
                            acc[r, ki] = T.float32(0)
                    for ko in range(KO):
                        for r in T.unroll(R):
                            for ki in T.vectorized(lanes):
                                acc[r, ki] = acc[r, ki] + x[i, ko * lanes + ki] * T.Cast(
                                    f32, W[T.min(no * R + r, N - 1), ko * lanes + ki])
                    for r in T.unroll(R):
                        y[i, T.min(no * R + r, N - 1)] = T.float32(0)
                        for ki in T.unroll(lanes):
                            y[i, T.min(no * R + r, N - 1)] = y[i, T.min(no * R + r, N - 1)] + acc[r, ki]

    return dense_linear


def _group_kernel(fmt: WeightFormat, K: int, R: int):
    epu, bits, gs, mi = fmt.epu, fmt.bits, fmt.group_size, fmt.max_int
    words, groups = fmt.words(K), fmt.groups(K)
    used_words = -(-K // epu)  # words that hold elements < K
    KP = used_words * epu  # row buffer length (>= K; lanes past K are zero codes, never read)
    lanes = _lanes(K)
    KO = K // lanes
    mask = (1 << bits) - 1
    f32, sdt = "float32", fmt.dtype
    kn = fmt.layout == "KN"

    if not kn:
        @T.prim_func(private=True, s_tir=True)
        def group_linear(var_x: T.handle, var_qw: T.handle, var_qs: T.handle, var_y: T.handle):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            m = T.int64()
            N = T.int64()
            x = T.match_buffer(var_x, (m, K), f32)
            qw = T.match_buffer(var_qw, (N, words), "uint32")
            qs = T.match_buffer(var_qs, (N, groups), sdt)
            y = T.match_buffer(var_y, (m, N), f32)
            for no in T.parallel((N + R - 1) // R):
                with T.sblock("group_linear"):
                    row = T.sblock_alloc_buffer((R, KP), f32, scope="local")
                    acc = T.sblock_alloc_buffer((R, lanes), f32, scope="local")
                    for r in T.unroll(R):
                        for w in range(used_words):
                            for e in T.vectorized(epu):
                                row[r, w * epu + e] = (T.Cast(f32, T.bitwise_and(
                                    T.shift_right(qw[T.min(no * R + r, N - 1), w], T.Cast("uint32", e * bits)),
                                    T.uint32(mask))) - T.float32(mi)) * T.Cast(
                                        f32, qs[T.min(no * R + r, N - 1), w * epu // gs])
                    for i in range(m):
                        for r in T.unroll(R):
                            for ki in T.vectorized(lanes):
                                acc[r, ki] = T.float32(0)
                        for ko in range(KO):
                            for r in T.unroll(R):
                                for ki in T.vectorized(lanes):
                                    acc[r, ki] = acc[r, ki] + x[i, ko * lanes + ki] * row[r, ko * lanes + ki]
                        for r in T.unroll(R):
                            y[i, T.min(no * R + r, N - 1)] = T.float32(0)
                            for ki in T.unroll(lanes):
                                y[i, T.min(no * R + r, N - 1)] = y[i, T.min(no * R + r, N - 1)] + acc[r, ki]

        return group_linear

    @T.prim_func(private=True, s_tir=True)
    def group_linear_kn(var_x: T.handle, var_qw: T.handle, var_qs: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        N = T.int64()
        x = T.match_buffer(var_x, (m, K), f32)
        qw = T.match_buffer(var_qw, (words, N), "uint32")
        qs = T.match_buffer(var_qs, (groups, N), sdt)
        y = T.match_buffer(var_y, (m, N), f32)
        for no in T.parallel((N + R - 1) // R):
            with T.sblock("group_linear_kn"):
                row = T.sblock_alloc_buffer((R, KP), f32, scope="local")
                acc = T.sblock_alloc_buffer((R, lanes), f32, scope="local")
                for r in T.unroll(R):
                    for w in range(used_words):
                        for e in T.vectorized(epu):
                            row[r, w * epu + e] = (T.Cast(f32, T.bitwise_and(
                                T.shift_right(qw[w, T.min(no * R + r, N - 1)], T.Cast("uint32", e * bits)),
                                T.uint32(mask))) - T.float32(mi)) * T.Cast(
                                    f32, qs[w * epu // gs, T.min(no * R + r, N - 1)])
                for i in range(m):
                    for r in T.unroll(R):
                        for ki in T.vectorized(lanes):
                            acc[r, ki] = T.float32(0)
                    for ko in range(KO):
                        for r in T.unroll(R):
                            for ki in T.vectorized(lanes):
                                acc[r, ki] = acc[r, ki] + x[i, ko * lanes + ki] * row[r, ko * lanes + ki]
                    for r in T.unroll(R):
                        y[i, T.min(no * R + r, N - 1)] = T.float32(0)
                        for ki in T.unroll(lanes):
                            y[i, T.min(no * R + r, N - 1)] = y[i, T.min(no * R + r, N - 1)] + acc[r, ki]

    return group_linear_kn
