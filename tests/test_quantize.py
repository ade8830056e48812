"""quantize/: the fast torch implementation equals MLC's math bit for bit.

Two oracles: tests/mlc_quant_reference.py (numpy, written from mlc-format.md §3), and a TVM
kernel written the way mlc-llm's GroupQuantize._quantize + pack_weight are (te compute,
LegalizeOps, relax.build for llvm) — the code path `mlc_llm convert_weight --device cpu` runs.
"""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest

import quantize.group as group
from quantize import (
    SCHEMES,
    NonFiniteWeightError,
    QuantizeError,
    get_scheme,
    library_params,
    quantize_param,
)
from quantize.spec import LibraryParam, SourceParam
from tests.mlc_quant_reference import NP_DTYPES, cast_to_model_dtype, dequantize_nk, quantize_nk, quantize_reference

BF16 = np.dtype(ml_dtypes.bfloat16)
SOURCE_DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]
GROUP_SCHEMES = [s for s in SCHEMES.values() if s.is_quantized]
NO_QUANT_SCHEMES = [s for s in SCHEMES.values() if not s.is_quantized]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Tiny chunks so that every test crosses chunk boundaries and runs on the worker pool."""
    monkeypatch.setattr(group, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(group, "WORKERS", 2)


# ---------------------------------------------------------------------------------------------
# test matrices


def tie_rows(k: int, gs: int, mi: int) -> np.ndarray:
    """Rows whose W/scale + max_int lands exactly on k + 0.5 (scale 1, 0.5 and 0.25)."""
    rows = []
    for scale in (1.0, 0.5, 0.25):
        row = np.empty(k, np.float32)
        for g0 in range(0, k, gs):
            n = min(gs, k - g0)
            vals = ((np.arange(n) % (2 * mi)) - mi + 0.5) * scale  # -mi+0.5 .. mi-0.5: ties
            vals[0] = mi * scale  # sets max_abs so that scale is exact
            row[g0 : g0 + n] = vals
        rows.append(row)
    return np.stack(rows)


def special_matrix(n: int, k: int, gs: int, mi: int, rng: np.random.Generator, big: float) -> np.ndarray:
    """Random rows of varied magnitude plus all-zero rows/groups, ties, tiny (subnormal-scale) rows."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    w *= rng.choice([1e-2, 0.05, 1.0, big], size=(n, 1)).astype(np.float32)
    extra = [tie_rows(k, gs, mi), np.zeros((1, k), np.float32)]
    tiny = rng.standard_normal((2, k)).astype(np.float32) * np.float32(3e-6)  # fp16 scale subnormal / 0
    tiny[1, ::3] = 0
    extra.append(tiny)
    huge_ratio = rng.standard_normal((1, k)).astype(np.float32) * 1e-3
    huge_ratio[0, ::gs] = big  # one large value per group, the rest quantize near the zero point
    extra.append(huge_ratio)
    # scale rounds to 0 (fp16) or is subnormal (fp32/bf16) although the group is not zero
    denormal = np.resize(np.array([1, -2, 3, 0, -1], np.float32), (2, k))
    denormal[0] *= np.float32(2.0**-24)
    denormal[1] *= np.float32(1e-39)
    extra.append(denormal)
    w = np.concatenate([w] + extra)
    w[0, : min(gs, k)] = 0  # an all-zero group in an otherwise non-zero row
    if k > gs:
        w[1, gs : min(2 * gs, k)] = -0.0
    return w


SHAPES = [(1, 1), (1, 7), (1, 32), (3, 33), (5, 100), (2, 40), (4, 41), (9, 256), (40, 300), (130, 64), (17, 2048)]


def case_id(shape):
    return f"{shape[0]}x{shape[1]}"


def assert_same_bytes(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.flags.c_contiguous, f"{what}: not C-contiguous"
    if got.tobytes() != want.tobytes():
        diff = np.count_nonzero(got.view(np.uint8) != want.view(np.uint8))
        raise AssertionError(f"{what}: {diff} bytes differ")


# ---------------------------------------------------------------------------------------------
# schemes


def test_scheme_table_matches_mlc():
    q = get_scheme("q4f16_1")
    assert (q.kind, q.model_dtype, q.bits, q.group_size, q.storage, q.layout) == (
        "group-quant", "float16", 4, 32, "uint32", "NK")
    q3 = get_scheme("q3f16_1")
    assert (q3.bits, q3.group_size, q3.elems_per_storage, q3.storage_per_group, q3.max_int) == (3, 40, 10, 4, 3)
    assert get_scheme("q4f16_0").layout == "KN" and get_scheme("q4bf16_0").model_dtype == "bfloat16"
    assert get_scheme("q4f32_1").model_dtype == "float32"
    assert [s.model_dtype for s in map(get_scheme, ["q0f16", "q0bf16", "q0f32"])] == ["float16", "bfloat16", "float32"]
    assert all(get_scheme(n).kind == "no-quant" for n in ["q0f16", "q0bf16", "q0f32"])
    assert {"q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1", "q4bf16_1", "q3f16_1", "q4f16_0"} <= set(SCHEMES)


def test_unknown_scheme_lists_supported_ones():
    with pytest.raises(QuantizeError) as err:
        get_scheme("q4f16_9")
    assert err.value.path is None
    assert "q4f16_9" in str(err.value)
    for name in ("q4f16_1", "q0f16", "q3f16_1"):
        assert name in err.value.hint


# ---------------------------------------------------------------------------------------------
# bit-exactness against the numpy reference


@pytest.mark.parametrize("scheme", GROUP_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("source_dtype", SOURCE_DTYPES, ids=lambda d: d.name)
def test_group_quant_equals_reference(scheme, source_dtype):
    rng = np.random.default_rng(zlib.crc32(f"{scheme.name} {source_dtype.name}".encode()))
    fp16 = scheme.model_dtype == "float16" or source_dtype == np.float16
    big = 1.0e4 if fp16 else 1.0e30  # as large as the narrowest dtype allows (fp16 overflows at 65520)
    for shape in SHAPES:
        w = special_matrix(*shape, scheme.group_size, scheme.max_int, rng, big).astype(source_dtype)
        for role in ("linear", "embedding", "lm_head"):
            p = SourceParam("m.proj.weight", w.shape, ("m.proj.weight",), role)
            got = quantize_param(p, w, scheme)
            if not scheme.quantizes(role):  # q4f16_2: embedding and head stay fp16
                assert [n for n, _ in got] == ["m.proj.weight"]
                assert_same_bytes(got[0][1], cast_to_model_dtype(w, "float16"), f"{scheme.name} {role}")
                continue
            (lp_w, lp_s) = library_params([p], scheme)
            want_q, want_s = quantize_reference(w, scheme.bits, scheme.group_size, scheme.model_dtype,
                                                transpose=scheme.transposes(role))
            assert [n for n, _ in got] == [lp_w.name, lp_s.name] == ["m.proj.q_weight", "m.proj.q_scale"]
            assert got[0][1].shape == lp_w.shape and got[1][1].shape == lp_s.shape
            assert got[0][1].dtype.name == lp_w.dtype and got[1][1].dtype.name == lp_s.dtype
            what = f"{scheme.name} {source_dtype.name} {case_id(w.shape)} {role}"
            assert_same_bytes(got[0][1], want_q, what + " q_weight")
            assert_same_bytes(got[1][1], want_s, what + " q_scale")


@pytest.mark.parametrize("scheme", GROUP_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("chunk,workers", [(1 << 19, 0), (1 << 16, 1)], ids=["default", "one-worker"])
def test_large_random_matrix_equals_reference(scheme, chunk, workers, monkeypatch):
    """A realistic matrix with the default chunking and worker pool, and with torch's own threads."""
    monkeypatch.setattr(group, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(group, "WORKERS", workers)
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((300, 1000)) * 0.02).astype(BF16)
    p = SourceParam("model.layers.0.mlp.down_proj.weight", w.shape, ("x",), "linear")
    got = dict(quantize_param(p, w, scheme))
    want_q, want_s = quantize_reference(w, scheme.bits, scheme.group_size, scheme.model_dtype,
                                        transpose=scheme.transposes("linear"))
    assert_same_bytes(got["model.layers.0.mlp.down_proj.q_weight"], want_q, scheme.name)
    assert_same_bytes(got["model.layers.0.mlp.down_proj.q_scale"], want_s, scheme.name)


def test_tie_rows_really_are_ties_and_the_rounding_mode_matters():
    """The tie rows hit exact .5 and random fp16 data hits them too; ties-away would differ."""
    w = tie_rows(64, 32, 7).astype(np.float16)
    x = w.reshape(3, 2, 32).astype(np.float32)
    scale = np.abs(x).max(axis=2, keepdims=True) / 7
    frac = (x / scale + 7) % 1
    assert np.count_nonzero(frac == 0.5) > 100

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((48, 4096)) * 0.02).astype(np.float16)
    q_even, _ = quantize_nk(w, 4, 32, "float16")
    q_fast = dict(quantize_param(SourceParam("a.weight", w.shape, ("a",), "linear"), w, get_scheme("q4f16_1")))
    assert q_fast["a.q_weight"].tobytes() == q_even.tobytes()
    # the same math with ties-away-from-zero (old CPU/Metal MLC) is a different answer
    g = w.reshape(48, 128, 32)
    s = (np.abs(g).max(axis=2) / np.float16(7)).astype(np.float16)
    x = ((g / s[:, :, None]).astype(np.float16) + np.float16(7)).astype(np.float16).astype(np.float64)
    away = np.clip(np.floor(x + 0.5), 0, 14).astype(np.uint32).reshape(48, -1, 8)
    q_away = np.bitwise_or.reduce(away << (np.arange(8, dtype=np.uint32) * 4), axis=2)
    assert np.count_nonzero(q_away != q_even) > 100


def test_fp16_needs_per_op_rounding():
    """Computing W/scale + 7 in fp32 and rounding once would differ: the test can tell."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((48, 4096)) * 0.02).astype(np.float16)
    q, s = quantize_nk(w, 4, 32, "float16")
    g = w.reshape(48, 128, 32).astype(np.float32)
    x = g / s.astype(np.float32)[:, :, None] + 7
    codes = np.clip(np.rint(x), 0, 14).astype(np.uint32).reshape(48, -1, 8)
    q32 = np.bitwise_or.reduce(codes << (np.arange(8, dtype=np.uint32) * 4), axis=2)
    assert np.count_nonzero(q32 != q) > 100


def test_zero_groups_and_tail_lanes():
    w = np.zeros((2, 70), np.float32)
    w[1, 64:] = [1, -1, 2, -2, 0.5, 0]  # third group: 6 real lanes, 26 tail lanes
    (_, q), (_, s) = quantize_param(SourceParam("e.weight", w.shape, ("e",), "embedding"), w, get_scheme("q4f16_1"))
    assert q.shape == (2, 12) and s.shape == (2, 3)
    assert not q[0].any() and not s[0].any()  # zero group: scale 0, code 0 (not 7)
    assert not q[1, :8].any()
    # codes of [1,-1,2,-2,.5,0] with scale 2/7: round(w*3.5+7) = 10.5->10, 3.5->4, 14, 0, 8.75->9, 7
    codes = [10, 4, 14, 0, 9, 7, 0, 0]
    assert int(q[1, 8]) == sum(c << (4 * r) for r, c in enumerate(codes))
    assert not q[1, 9:].any()  # tail words: zero bits
    assert float(s[1, 2]) == float(np.float16(np.float16(2) / np.float16(7)))


def test_int3_packs_ten_codes_per_word():
    w = np.tile(np.array([3, -3, 2, -2, 1, -1, 0, 3, 1.4, 1.6], np.float32), (1, 4))  # K = 40 = one group
    (_, q), (_, s) = quantize_param(SourceParam("l.weight", w.shape, ("l",), "linear"), w, get_scheme("q3f16_1"))
    assert q.shape == (1, 4) and s.shape == (1, 1) and float(s[0, 0]) == 1.0
    codes = [6, 0, 5, 1, 4, 2, 3, 6, 4, 5]
    assert all(int(x) == sum(c << (3 * r) for r, c in enumerate(codes)) for x in q[0])
    assert int(q.max()) < 2**30  # the top 2 bits stay 0


def test_dequantized_weights_are_close():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    for name in ("q4f16_1", "q4bf16_1", "q4f32_1", "q3f16_1"):
        sch = get_scheme(name)
        (_, q), (_, s) = quantize_param(SourceParam("l.weight", w.shape, ("l",), "linear"), w, sch)
        back = dequantize_nk(q, s, sch.bits, sch.group_size, 256)
        step = np.repeat(s.astype(np.float64), sch.group_size, axis=1)[:, :256]
        w_model = cast_to_model_dtype(w, sch.model_dtype).astype(np.float64)
        assert np.all(np.abs(back - w_model) <= 0.5 * step * 1.02), name


@pytest.mark.parametrize("scheme", NO_QUANT_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("source_dtype", SOURCE_DTYPES, ids=lambda d: d.name)
def test_no_quant_cast_equals_reference(scheme, source_dtype):
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((37, 300)) * rng.choice([1e-6, 1e-3, 1, 1e3], size=(37, 1))).astype(source_dtype)
    for role in ("linear", "embedding", "lm_head", "norm"):
        arr = w[0] if role == "norm" else w
        p = SourceParam("x.weight", arr.shape, ("x.weight",), role)
        [(name, got)] = quantize_param(p, arr, scheme)
        [lp] = library_params([p], scheme)
        assert name == lp.name == "x.weight" and got.dtype.name == lp.dtype == scheme.model_dtype
        assert_same_bytes(got, cast_to_model_dtype(arr, scheme.model_dtype), f"{scheme.name} {role}")


def test_norms_and_biases_stay_unquantized_in_the_model_dtype():
    rng = np.random.default_rng(12)
    for name in ("q4f16_1", "q4bf16_0", "q3f16_1", "q4f32_1"):
        sch = get_scheme(name)
        for role in ("norm", "bias"):
            w = rng.standard_normal(96).astype(BF16)
            p = SourceParam("m.attn.c_attn.bias", (96,), ("a", "b", "c"), role)
            [(n, got)] = quantize_param(p, w, sch)
            assert n == "m.attn.c_attn.bias"
            assert_same_bytes(got, cast_to_model_dtype(w, sch.model_dtype), f"{name} {role}")


def test_q4f16_2_keeps_embedding_and_head_unquantized():
    sch = get_scheme("q4f16_2")
    w = np.ones((8, 64), np.float32)
    for role in ("embedding", "lm_head"):
        [(n, got)] = quantize_param(SourceParam("lm_head.weight", w.shape, ("x",), role), w, sch)
        assert n == "lm_head.weight" and got.dtype == np.float16
    assert [n for n, _ in quantize_param(SourceParam("l.weight", w.shape, ("x",), "linear"), w, sch)] == [
        "l.q_weight", "l.q_scale"]


# ---------------------------------------------------------------------------------------------
# non-finite weights and bad inputs


@pytest.mark.parametrize("scheme_name", ["q4f16_1", "q4bf16_1", "q4f32_1", "q3f16_0", "q0f16", "q0bf16", "q0f32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("role", ["linear", "embedding", "norm"])
def test_non_finite_raises(scheme_name, bad, role):
    w = np.ones((50, 96), np.float32) if role != "norm" else np.ones(96, np.float32)
    w.reshape(-1)[w.size * 3 // 4] = bad
    p = SourceParam("model.layers.3.mlp.down_proj.weight", w.shape, ("x",), role)
    with pytest.raises(NonFiniteWeightError) as err:
        quantize_param(p, w.astype(BF16), get_scheme(scheme_name))
    assert err.value.param == p.name and p.name in str(err.value)
    assert "source" in str(err.value) and err.value.hint


@pytest.mark.parametrize("scheme_name", ["q4f16_1", "q0f16"])
def test_overflow_into_fp16_raises(scheme_name):
    w = np.ones((4, 64), np.float32)
    w[2, 5] = 70000.0  # finite in bf16/fp32, inf in fp16
    p = SourceParam("model.embed_tokens.weight", w.shape, ("x",), "embedding")
    with pytest.raises(NonFiniteWeightError) as err:
        quantize_param(p, w.astype(BF16), get_scheme(scheme_name))
    assert "overflows float16" in str(err.value) and "row 2" in str(err.value)
    # the same weight is fine with a bf16 model dtype
    assert quantize_param(p, w.astype(BF16), get_scheme("q4bf16_1"))


def test_shape_and_dtype_mismatch_raise():
    p = SourceParam("l.weight", (4, 64), ("l",), "linear")
    with pytest.raises(QuantizeError, match="shape"):
        quantize_param(p, np.ones((4, 63), np.float32), get_scheme("q4f16_1"))
    with pytest.raises(QuantizeError, match="dtype"):
        quantize_param(p, np.ones((4, 64), np.int8), get_scheme("q4f16_1"))


def test_read_only_and_non_contiguous_sources():
    rng = np.random.default_rng(9)
    w = (rng.standard_normal((40, 96)) * 0.1).astype(BF16)
    ro = w.copy()
    ro.flags.writeable = False
    sch = get_scheme("q4f16_1")
    p = SourceParam("l.weight", (40, 96), ("l",), "linear")
    want = quantize_reference(w, 4, 32, "float16", False)
    for arr in (ro, np.asfortranarray(w)):
        got = [a for _, a in quantize_param(p, arr, sch)]
        assert_same_bytes(got[0], want[0], "q_weight")
        assert_same_bytes(got[1], want[1], "q_scale")


# ---------------------------------------------------------------------------------------------
# the parameter list


LLAMA_32_1B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
    "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "num_hidden_layers": 16, "vocab_size": 128256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "max_position_embeddings": 131072, "rope_theta": 500000.0, "hidden_act": "silu",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def llama_1b_params():
    from personalize.arch import get_architecture

    arch = get_architecture("llama")
    return arch.source_params(arch.library_config(dict(LLAMA_32_1B)))


def test_llama_32_1b_q4f16_1_parameter_list():
    """mlc-format.md §3.1: the Llama-3.2-1B q4f16_1 library's parameters."""
    lib = {p.name: p for p in library_params(llama_1b_params(), get_scheme("q4f16_1"))}
    assert lib["model.embed_tokens.q_weight"] == LibraryParam("model.embed_tokens.q_weight", ("vocab_size", 256), "uint32")
    assert lib["model.embed_tokens.q_scale"] == LibraryParam("model.embed_tokens.q_scale", ("vocab_size", 64), "float16")
    a, m = "model.layers.0.self_attn", "model.layers.0.mlp"
    expect = {
        f"{a}.qkv_proj": ((3072, 256), (3072, 64)),
        f"{a}.o_proj": ((2048, 256), (2048, 64)),
        f"{m}.gate_up_proj": ((16384, 256), (16384, 64)),
        f"{m}.down_proj": ((2048, 1024), (2048, 256)),
    }
    for module, (qw, qs) in expect.items():
        assert lib[f"{module}.q_weight"] == LibraryParam(f"{module}.q_weight", qw, "uint32")
        assert lib[f"{module}.q_scale"] == LibraryParam(f"{module}.q_scale", qs, "float16")
    assert lib["model.layers.0.input_layernorm.weight"] == LibraryParam(
        "model.layers.0.input_layernorm.weight", (2048,), "float16")
    assert lib["model.norm.weight"].dtype == "float16"
    assert not any(n.startswith("lm_head") for n in lib)
    assert not any(n.endswith(".weight") and "norm" not in n for n in lib)
    assert len(lib) == 2 + 16 * (4 * 2 + 2) + 1
    # q_weight comes right before its q_scale, in the source order
    names = [p.name for p in library_params(llama_1b_params(), get_scheme("q4f16_1"))]
    assert names[:4] == ["model.embed_tokens.q_weight", "model.embed_tokens.q_scale",
                         f"{a}.qkv_proj.q_weight", f"{a}.qkv_proj.q_scale"]


def test_kn_layout_transposes_linear_and_head_only():
    params = [
        SourceParam("model.embed_tokens.weight", (1000, 2048), ("e",), "embedding", ("vocab_size", 2048)),
        SourceParam("model.layers.0.mlp.down_proj.weight", (2048, 8192), ("d",), "linear"),
        SourceParam("lm_head.weight", (1000, 2048), ("h",), "lm_head", ("vocab_size", 2048)),
    ]
    lib = {p.name: p.shape for p in library_params(params, get_scheme("q4f16_0"))}
    assert lib["model.embed_tokens.q_weight"] == ("vocab_size", 256)
    assert lib["model.embed_tokens.q_scale"] == ("vocab_size", 64)
    assert lib["model.layers.0.mlp.down_proj.q_weight"] == (1024, 2048)
    assert lib["model.layers.0.mlp.down_proj.q_scale"] == (256, 2048)
    assert lib["lm_head.q_weight"] == (256, "vocab_size")
    assert lib["lm_head.q_scale"] == (64, "vocab_size")
    q3 = {p.name: p.shape for p in library_params(params[1:2], get_scheme("q3f16_0"))}
    assert q3 == {"model.layers.0.mlp.down_proj.q_weight": (820, 2048), "model.layers.0.mlp.down_proj.q_scale": (205, 2048)}


def test_qwen2_bias_stays_unquantized():
    from personalize.arch import get_architecture

    hf = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
          "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
          "max_position_embeddings": 32768, "rope_theta": 1000000.0, "tie_word_embeddings": True}
    arch = get_architecture("qwen2")
    lib = {p.name: p for p in library_params(arch.source_params(arch.library_config(hf)), get_scheme("q4f16_1"))}
    a = "model.layers.1.self_attn"
    assert lib[f"{a}.c_attn.bias"] == LibraryParam(f"{a}.c_attn.bias", (1152,), "float16")
    assert lib[f"{a}.c_attn.q_weight"] == LibraryParam(f"{a}.c_attn.q_weight", (1152, 112), "uint32")
    assert lib["model.embed_tokens.q_weight"].shape == (151936, 112)  # concrete vocab in qwen2
    bf = {p.name: p for p in library_params(arch.source_params(arch.library_config(hf)), get_scheme("q4bf16_0"))}
    assert bf[f"{a}.c_attn.bias"].dtype == "bfloat16"
    assert bf[f"{a}.c_attn.q_weight"].shape == (112, 1152)


# ---------------------------------------------------------------------------------------------
# against TVM itself: MLC's GroupQuantize._quantize + pack_weight, compiled for llvm


def build_mlc_quantize_kernel(shape, dtype, bits, gs, transpose):
    """A te/relax copy of mlc_llm GroupQuantize._quantize (axis=-1) + utils.pack_weight,
    compiled the way mlc_llm.quantization.utils.compile_quantize_func does on CPU."""
    import tvm
    from tvm import relax, te, tirx, topi

    epu, mi = 32 // bits, (1 << (bits - 1)) - 1

    def _quantize(weight):
        max_int = tirx.const(mi, dtype)
        n, k = weight.shape
        r = te.reduce_axis((0, gs), name="r")
        num_group = tirx.ceildiv(k, gs)
        max_abs = te.compute(
            (n, num_group),
            lambda i, g: te.max(
                tirx.if_then_else(g * gs + r < k, te.abs(weight(i, g * gs + r)), te.min_value(dtype)), axis=r),
            name="max_abs_value")
        scale = te.compute((n, num_group), lambda i, g: max_abs(i, g).astype(dtype) / max_int, name="scale")
        scaled = te.compute(
            (n, k),
            lambda i, j: tirx.min(
                tirx.max(tirx.round(weight(i, j) / scale(i, j // gs) + max_int), tirx.const(0, dtype)),
                max_int * 2).astype("uint32"))
        rr = te.reduce_axis((0, epu), name="r")
        packed = te.compute(
            (n, (gs // epu) * num_group),
            lambda i, j: tirx.sum(
                tirx.if_then_else(j * epu + rr < k, scaled(i, j * epu + rr) << (rr * bits), tirx.const(0, "uint32")),
                axis=rr),
            name="packed_weight").astype("uint32")
        if transpose:
            packed, scale = topi.transpose(packed), topi.transpose(scale)
        return packed, scale

    bb = relax.BlockBuilder()
    wv = relax.Var("weight", relax.TensorType(shape, dtype))
    with bb.function(name="main", params=[wv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit_te(_quantize, wv))
        bb.emit_func_output(gv)
    mod = relax.transform.LegalizeOps()(bb.finalize())
    vm = relax.VirtualMachine(relax.build(mod, target="llvm"), tvm.cpu())
    return lambda w: [t.numpy() for t in vm["main"](tvm.runtime.tensor(w))]


@pytest.mark.parametrize(
    "scheme_name,shape",
    [("q4f16_1", (60, 4096)), ("q4f16_1", (45, 100)), ("q4f16_0", (45, 70)), ("q3f16_1", (45, 130)),
     ("q4f32_1", (45, 300)), ("q4bf16_1", (45, 300)), ("q4bf16_0", (45, 65)), ("q4bf16_0", (33, 256))],
)
def test_equals_tvm_compiled_mlc_kernel(scheme_name, shape):
    """The strongest evidence: MLC's own TE quantization, compiled by apache-tvm for llvm."""
    pytest.importorskip("tvm")
    sch = get_scheme(scheme_name)
    rng = np.random.default_rng(21)
    w = special_matrix(*shape, sch.group_size, sch.max_int, rng, 1.0e4 if sch.is_float16 else 1e30).astype(BF16)
    w_model = cast_to_model_dtype(w, sch.model_dtype)
    kernel = build_mlc_quantize_kernel(w_model.shape, sch.model_dtype, sch.bits, sch.group_size, sch.layout == "KN")
    tvm_q, tvm_s = kernel(w_model)
    got = [a for _, a in quantize_param(SourceParam("l.weight", w.shape, ("l",), "linear"), w, sch)]
    assert tvm_s.dtype == NP_DTYPES[sch.model_dtype]
    assert_same_bytes(got[0], np.ascontiguousarray(tvm_q.astype(np.uint32)), f"{scheme_name} q_weight vs TVM")
    assert_same_bytes(got[1], np.ascontiguousarray(tvm_s), f"{scheme_name} q_scale vs TVM")
