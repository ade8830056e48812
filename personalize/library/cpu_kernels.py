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

from quantize.schemes import codes_per_word, num_groups, num_words, zero_point


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
        return codes_per_word(self.bits)

    @property
    def max_int(self) -> int:
        return zero_point(self.bits)

    def words(self, k: int) -> int:
        return num_words(k, self.bits, self.group_size)

    def groups(self, k: int) -> int:
        return num_groups(k, self.group_size)


def _lanes(k: int) -> int:
    """The widest vector width (16, 8, 4, 2, 1) that divides a loop of length k."""
    for lanes in (16, 8, 4, 2):
        if k % lanes == 0:
            return lanes
    return 1


DENSE_ROWS = 16  # dense decode is bound by memory latency: 16 row streams per task beat 4 (1.6x, measured)
GROUP_ROWS = 4  # quantized: 4 rows per task measured fastest (more rows spill the unpack registers)


def linear_kernel(fmt: WeightFormat, k: int, rows: int | None = None):
    """A PrimFunc (x [m, K] f32, weights..., y [m, N] f32); m and N are symbolic.

    Each task handles `rows` output features; the last task clamps its row index into range
    (it recomputes and rewrites the final row with the same value), so N need not divide.
    """
    if fmt.kind == "dense":
        return _dense_kernel(fmt.dtype, k, rows or DENSE_ROWS)
    return _group_kernel(fmt, k, rows or GROUP_ROWS)


MI = 4  # activation rows per register tile in prefill (MI x R accumulators of `lanes` floats)


def _dense_kernel(wdtype: str, K: int, R: int):
    RT = 4 if R % 4 == 0 else R  # weight rows per prefill register tile
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
                tile = T.sblock_alloc_buffer((MI, RT, lanes), f32, scope="local")
                if m == 1:
                    for r in T.unroll(R):
                        for ki in T.vectorized(lanes):
                            acc[r, ki] = T.float32(0)
                    for ko in range(KO):
                        for r in T.unroll(R):
                            for ki in T.vectorized(lanes):
                                acc[r, ki] = acc[r, ki] + x[0, ko * lanes + ki] * T.Cast(
                                    f32, W[T.min(no * R + r, N - 1), ko * lanes + ki])
                    for r in T.unroll(R):
                        y[0, T.min(no * R + r, N - 1)] = T.float32(0)
                        for ki in T.unroll(lanes):
                            y[0, T.min(no * R + r, N - 1)] = y[0, T.min(no * R + r, N - 1)] + acc[r, ki]
                else:
                    # prefill: MI activation rows x R weight rows per step, so each load feeds several
                    # FMAs; the last tile clamps its row index (recomputes and rewrites equal values)
                    # (in blocks of RT of the task's rows, so the MI x RT tile stays in registers)
                    for rb, io in T.grid(R // RT, (m + MI - 1) // MI):
                        for ii in T.unroll(MI):
                            for r in T.unroll(RT):
                                for ki in T.vectorized(lanes):
                                    tile[ii, r, ki] = T.float32(0)
                        for ko in range(KO):
                            for ii in T.unroll(MI):
                                for r in T.unroll(RT):
                                    for ki in T.vectorized(lanes):
                                        tile[ii, r, ki] = tile[ii, r, ki] + x[
                                            T.min(io * MI + ii, m - 1), ko * lanes + ki] * T.Cast(
                                            f32, W[T.min(no * R + rb * RT + r, N - 1), ko * lanes + ki])
                        for ii in T.unroll(MI):
                            for r in T.unroll(RT):
                                y[T.min(io * MI + ii, m - 1), T.min(no * R + rb * RT + r, N - 1)] = T.float32(0)
                                for ki in T.unroll(lanes):
                                    y[T.min(io * MI + ii, m - 1), T.min(no * R + rb * RT + r, N - 1)] = y[
                                        T.min(io * MI + ii, m - 1), T.min(no * R + rb * RT + r, N - 1)] + tile[
                                        ii, r, ki]

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
        return _group_kernel_nk(fmt, K, R)

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


def _group_kernel_nk(fmt: WeightFormat, K: int, R: int):
    """NK layout, vectorized across words: element e of word w goes to slot [e, w] of a permuted row.

    x is permuted the same way once per call (xp[i, e, w] = x[i, w*epu + e]); a dot product does
    not care about the order, and this turns the unpacking into contiguous 16-lane shifts instead
    of per-word broadcasts. Scales are expanded per word (sw[w]) once per row.
    """
    epu, bits, gs, mi = fmt.epu, fmt.bits, fmt.group_size, fmt.max_int
    words, groups = fmt.words(K), fmt.groups(K)
    W = -(-K // epu)  # words that hold elements < K
    lanes = _lanes(W)
    WO = W // lanes
    mask = (1 << bits) - 1
    f32, sdt = "float32", fmt.dtype
    wpg = gs // epu  # words per group
    G = -(-W // wpg)  # groups that hold elements < K

    @T.prim_func(private=True, s_tir=True)
    def group_linear_nk(var_x: T.handle, var_qw: T.handle, var_qs: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        N = T.int64()
        x = T.match_buffer(var_x, (m, K), f32)
        qw = T.match_buffer(var_qw, (N, words), "uint32")
        qs = T.match_buffer(var_qs, (N, groups), sdt)
        y = T.match_buffer(var_y, (m, N), f32)
        with T.sblock("root"):
            xp = T.sblock_alloc_buffer((m, epu, W), f32)
            for i, e, w in T.grid(m, epu, W):
                with T.sblock("permute_x"):
                    xp[i, e, w] = T.if_then_else(w * epu + e < K, x[i, T.min(w * epu + e, K - 1)], T.float32(0))
            # sum of x over each word's elements, for the zero point: sum_e x*(c - mi) = sum_e x*c - mi*sum_e x
            xsum = T.sblock_alloc_buffer((m, W), f32)
            for i, w in T.grid(m, W):
                with T.sblock("sum_x"):
                    xsum[i, w] = T.float32(0)
                    for e in range(epu):
                        xsum[i, w] = xsum[i, w] + xp[i, e, w]
            for no in T.parallel((N + R - 1) // R):
                with T.sblock("group_linear_nk"):
                    row = T.sblock_alloc_buffer((R, epu, W), f32, scope="local")
                    sw = T.sblock_alloc_buffer((R, W), f32, scope="local")
                    sg = T.sblock_alloc_buffer((R, G), f32, scope="local")
                    acc = T.sblock_alloc_buffer((R, lanes), f32, scope="local")
                    part = T.sblock_alloc_buffer((R, lanes), f32, scope="local")
                    tile = T.sblock_alloc_buffer((MI, R, lanes), f32, scope="local")
                    # float16 scales: convert each group's scale once, then expand per word in float32
                    # (converting per word made q4f16 decode ~60% slower than q4f32)
                    for r in T.unroll(R):
                        for g in range(G):
                            sg[r, g] = T.Cast(f32, qs[T.min(no * R + r, N - 1), g])
                        for w in range(W):
                            sw[r, w] = sg[r, w // wpg]
                    if m == 1:
                        # decode: unpack straight into the dot product, scale once per word
                        for r in T.unroll(R):
                            for wi in T.vectorized(lanes):
                                acc[r, wi] = T.float32(0)
                        for wo in range(WO):
                            for r in T.unroll(R):
                                for wi in T.vectorized(lanes):
                                    part[r, wi] = T.float32(0)
                            for e in T.unroll(epu):
                                for r in T.unroll(R):
                                    for wi in T.vectorized(lanes):
                                        part[r, wi] = part[r, wi] + xp[0, e, wo * lanes + wi] * T.Cast(
                                            f32, T.bitwise_and(T.shift_right(
                                                qw[T.min(no * R + r, N - 1), wo * lanes + wi], T.uint32(e * bits)),
                                                T.uint32(mask)))
                            for r in T.unroll(R):
                                for wi in T.vectorized(lanes):
                                    acc[r, wi] = acc[r, wi] + sw[r, wo * lanes + wi] * (
                                        part[r, wi] - T.float32(mi) * xsum[0, wo * lanes + wi])
                        for r in T.unroll(R):
                            y[0, T.min(no * R + r, N - 1)] = T.float32(0)
                            for wi in T.unroll(lanes):
                                y[0, T.min(no * R + r, N - 1)] = y[0, T.min(no * R + r, N - 1)] + acc[r, wi]
                    else:
                        # prefill: dequantize R rows once, reuse them for every activation row
                        for r in T.unroll(R):
                            for e in T.unroll(epu):
                                for wo in range(WO):
                                    for wi in T.vectorized(lanes):
                                        row[r, e, wo * lanes + wi] = (T.Cast(f32, T.bitwise_and(T.shift_right(
                                            qw[T.min(no * R + r, N - 1), wo * lanes + wi], T.uint32(e * bits)),
                                            T.uint32(mask))) - T.float32(mi)) * sw[r, wo * lanes + wi]
                        # MI activation rows x R weight rows per step (as the dense kernel)
                        for io in range((m + MI - 1) // MI):
                            for ii in T.unroll(MI):
                                for r in T.unroll(R):
                                    for wi in T.vectorized(lanes):
                                        tile[ii, r, wi] = T.float32(0)
                            for e in range(epu):
                                for wo in range(WO):
                                    for ii in T.unroll(MI):
                                        for r in T.unroll(R):
                                            for wi in T.vectorized(lanes):
                                                tile[ii, r, wi] = tile[ii, r, wi] + xp[
                                                    T.min(io * MI + ii, m - 1), e, wo * lanes + wi] * row[
                                                    r, e, wo * lanes + wi]
                            for ii in T.unroll(MI):
                                for r in T.unroll(R):
                                    y[T.min(io * MI + ii, m - 1), T.min(no * R + r, N - 1)] = T.float32(0)
                                    for wi in T.unroll(lanes):
                                        y[T.min(io * MI + ii, m - 1), T.min(no * R + r, N - 1)] = y[
                                            T.min(io * MI + ii, m - 1), T.min(no * R + r, N - 1)] + tile[ii, r, wi]

    return group_linear_nk


def rms_norm_kernel(hidden: int, eps: float, wdtype: str):
    """A PrimFunc (x [m, hidden] f32, weight [hidden], y [m, hidden] f32): y = x * rsqrt(mean(x^2) + eps) * w.

    Why hand-written: dlight's CPU Reduction rule schedules TVM's legalized rms_norm by recomputing the
    whole sum of squares for every output element (hidden^2 work), which cost more than all matmuls
    together in decode. One vectorized pass for the sum, one for the scaling; rows in parallel for
    prefill only (a thread-pool launch costs more than one 576-wide row).
    """
    lanes = _lanes(hidden)
    KO = hidden // lanes
    f32 = "float32"

    @T.prim_func(private=True, s_tir=True)
    def rms_norm_cpu(var_x: T.handle, var_w: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, hidden), f32)
        w = T.match_buffer(var_w, (hidden,), wdtype)
        y = T.match_buffer(var_y, (m, hidden), f32)
        with T.sblock("root"):
            if m == 1:
                with T.sblock("rms_norm_row"):
                    acc = T.sblock_alloc_buffer((lanes,), f32, scope="local")
                    scale = T.sblock_alloc_buffer((1,), f32, scope="local")
                    for ki in T.vectorized(lanes):
                        acc[ki] = T.float32(0)
                    for ko in range(KO):
                        for ki in T.vectorized(lanes):
                            acc[ki] = acc[ki] + x[0, ko * lanes + ki] * x[0, ko * lanes + ki]
                    scale[0] = T.float32(0)
                    for ki in T.unroll(lanes):
                        scale[0] = scale[0] + acc[ki]
                    scale[0] = T.rsqrt(scale[0] / T.float32(hidden) + T.float32(eps))
                    for ko in range(KO):
                        for ki in T.vectorized(lanes):
                            y[0, ko * lanes + ki] = scale[0] * x[0, ko * lanes + ki] * T.Cast(f32, w[ko * lanes + ki])
            else:
                for i in T.parallel(m):
                    with T.sblock("rms_norm_rows"):
                        acc = T.sblock_alloc_buffer((lanes,), f32, scope="local")
                        scale = T.sblock_alloc_buffer((1,), f32, scope="local")
                        for ki in T.vectorized(lanes):
                            acc[ki] = T.float32(0)
                        for ko in range(KO):
                            for ki in T.vectorized(lanes):
                                acc[ki] = acc[ki] + x[i, ko * lanes + ki] * x[i, ko * lanes + ki]
                        scale[0] = T.float32(0)
                        for ki in T.unroll(lanes):
                            scale[0] = scale[0] + acc[ki]
                        scale[0] = T.rsqrt(scale[0] / T.float32(hidden) + T.float32(eps))
                        for ko in range(KO):
                            for ki in T.vectorized(lanes):
                                y[i, ko * lanes + ki] = scale[0] * x[i, ko * lanes + ki] * T.Cast(
                                    f32, w[ko * lanes + ki])

    return rms_norm_cpu
