"""quantize(scales="mse"|"range"): MLC's exact format with other scales, never worse than MLC's per group.

Errors are computed here independently of quantize/search.py: the artifact's arrays are unpacked
and dequantized with the plain MLC formula `(code - max_int) * scale` by the numpy oracle
(tests/mlc_quant_reference.py) and compared, in float64, with the weight cast to the model dtype.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import quantize.group as group
import quantize.search as search
from quantize import SCHEMES, NonFiniteWeightError, QuantizeError, get_scheme, quantize_param
from quantize.spec import SourceParam
from tests.conftest import run_cli
from tests.mlc_quant_reference import cast_to_model_dtype, dequantize_nk, quantize_reference

BF16 = np.dtype(ml_dtypes.bfloat16)
GROUP_SCHEMES = [s for s in SCHEMES.values() if s.is_quantized]
# Per group, mse may exceed mlc only by float rounding of the group sums (see SELECT_MARGIN).
REL_TOL = 1e-6


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Small chunks so that tests cross chunk boundaries and run on the two-worker pool."""
    monkeypatch.setattr(search, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(group, "CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(group, "WORKERS", 2)


def test_matrix(n: int, k: int, gs: int, seed: int = 0) -> np.ndarray:
    """Gaussian rows of varied magnitude, heavy-tailed rows, an all-zero row and group, tiny rows."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.choice([0.01, 0.05, 1.0], size=(n, 1)).astype(np.float32)
    w[n // 2 :] = rng.standard_t(3, size=(n - n // 2, k)).astype(np.float32) * 0.02
    w[0] = 0
    w[1, : min(gs, k)] = 0
    w[2] *= np.float32(1e-6)  # fp16 scales near the subnormal range
    return w


test_matrix.__test__ = False  # a helper, not a test


def as_nk(arrays: dict[str, np.ndarray], transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    q, s = arrays["m.q_weight"], arrays["m.q_scale"]
    return (np.ascontiguousarray(q.T), np.ascontiguousarray(s.T)) if transposed else (q, s)


def group_errors(q: np.ndarray, scale: np.ndarray, w_model: np.ndarray, bits: int, gs: int) -> np.ndarray:
    """Squared error per group [N, G] of the MLC dequantization against the model-dtype weight."""
    n, k = w_model.shape
    groups = scale.shape[1]
    diff = np.zeros((n, groups * gs))
    diff[:, :k] = dequantize_nk(q, scale, bits, gs, k) - w_model.astype(np.float64)
    return (diff.reshape(n, groups, gs) ** 2).sum(axis=2)


def quantize_both(w: np.ndarray, scheme, role: str = "linear", mode: str = "mse"):
    param = SourceParam("m.weight", w.shape, ("m.weight",), role)
    mlc = dict(quantize_param(param, w, scheme))
    mse = dict(quantize_param(param, w, scheme, scales=mode))
    return mlc, mse


def codes_of(q: np.ndarray, bits: int, k: int) -> np.ndarray:
    epu = 32 // bits
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    return ((q[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(q.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# the default stays MLC's bytes


@pytest.mark.parametrize("scheme", GROUP_SCHEMES, ids=lambda s: s.name)
def test_default_and_mlc_mode_equal_the_reference(scheme):
    w = test_matrix(37, 100, scheme.group_size).astype(BF16)
    param = SourceParam("m.weight", w.shape, ("m.weight",), "linear")
    want_q, want_s = quantize_reference(w, scheme.bits, scheme.group_size, scheme.model_dtype,
                                        scheme.transposes("linear"))
    for got in (quantize_param(param, w, scheme), quantize_param(param, w, scheme, scales="mlc")):
        (_, q), (_, s) = got
        assert q.tobytes() == want_q.tobytes() and q.shape == want_q.shape
        assert s.tobytes() == want_s.tobytes() and s.dtype == want_s.dtype


def test_unknown_scale_mode_is_refused():
    w = np.ones((4, 32), np.float32)
    param = SourceParam("m.weight", w.shape, ("m.weight",), "linear")
    with pytest.raises(QuantizeError) as err:
        quantize_param(param, w, get_scheme("q4f16_1"), scales="best")
    assert "best" in str(err.value) and "mse" in err.value.hint


def test_unquantized_roles_are_unaffected():
    w = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    param = SourceParam("m.norm.weight", w.shape, ("m.norm.weight",), "norm")
    scheme = get_scheme("q4f16_1")
    (_, a), = quantize_param(param, w, scheme)
    (_, b), = quantize_param(param, w, scheme, scales="mse")
    assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# mse: same format, never worse per group, better in total


@pytest.mark.parametrize("mode", ["mse", "range"])
@pytest.mark.parametrize("scheme", GROUP_SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(64, 256), (33, 100), (5, 41), (4, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_same_format_and_never_worse(scheme, shape, mode):
    gs, bits = scheme.group_size, scheme.bits
    w = test_matrix(*shape, gs, seed=shape[1])
    mlc, mse = quantize_both(w, scheme, mode=mode)
    for name in mlc:  # same names, shapes, dtypes, layout
        assert mse[name].shape == mlc[name].shape and mse[name].dtype == mlc[name].dtype, name
        assert mse[name].flags.c_contiguous, name
    kn = scheme.transposes("linear")
    (q_mlc, s_mlc), (q_mse, s_mse) = as_nk(mlc, kn), as_nk(mse, kn)
    w_model = cast_to_model_dtype(w, scheme.model_dtype)
    err_mlc = group_errors(q_mlc, s_mlc, w_model, bits, gs)
    err_mse = group_errors(q_mse, s_mse, w_model, bits, gs)
    worse = err_mse > err_mlc * (1 + REL_TOL) + 1e-30
    assert not worse.any(), f"{worse.sum()} groups worse, e.g. {err_mse[worse][:3]} vs {err_mlc[worse][:3]}"
    if shape[1] >= 41:  # enough values per group for a smaller scale to pay off somewhere
        assert err_mse.sum() < err_mlc.sum()
    # mse: codes in MLC's range 0..2*max_int; range: also 2**bits-1. Tail lanes are zero bits like MLC's
    codes = codes_of(q_mse, bits, shape[1])
    assert codes[:, : shape[1]].max() <= (2 * scheme.max_int if mode == "mse" else (1 << bits) - 1)
    assert not codes[:, shape[1] :].any()
    # zero groups keep scale 0; searched scales are never larger than MLC's (f < 1)
    zero = s_mlc.astype(np.float32) == 0
    assert (s_mse.astype(np.float32)[zero] == 0).all()
    if mode == "mse":
        assert (s_mse.astype(np.float32) <= s_mlc.astype(np.float32)).all()


@pytest.mark.parametrize("scheme", [get_scheme("q4f16_1"), get_scheme("q3f16_1")], ids=lambda s: s.name)
def test_mse_dequantizes_within_the_chosen_grid(scheme):
    """Each value lies within half a step of its dequantized value, or is a clamped extreme:
    this fails if codes were packed in the wrong order or belong to another scale."""
    gs, mi = scheme.group_size, scheme.max_int
    w = test_matrix(48, 160, gs, seed=7)
    _, mse = quantize_both(w, scheme)
    q, s = mse["m.q_weight"], mse["m.q_scale"].astype(np.float64)
    w_model = cast_to_model_dtype(w, scheme.model_dtype).astype(np.float64)
    deq = dequantize_nk(q, s, scheme.bits, gs, w.shape[1])
    step = np.repeat(s, gs, axis=1)[:, : w.shape[1]]
    inside = np.abs(w_model) <= mi * step
    assert (np.abs(deq - w_model)[inside] <= step[inside] * (0.5 + 1e-6)).all()
    assert np.allclose(np.abs(deq[~inside]), mi * step[~inside])  # clamped extremes sit at ±max_int*scale
    assert (~inside).any()  # the search did clamp some values


@pytest.mark.parametrize("scheme", [get_scheme("q4f16_1"), get_scheme("q3f16_1"), get_scheme("q4bf16_1")],
                         ids=lambda s: s.name)
def test_range_clips_nothing_and_uses_the_top_code(scheme):
    """range: every value within half a step of its dequantized value (nothing clipped), and the
    top code 2**bits-1 = +max_int+1 is used where a group's largest magnitude is positive."""
    gs, mi = scheme.group_size, scheme.max_int
    w = test_matrix(48, 160, gs, seed=11)
    _, rng = quantize_both(w, scheme, mode="range")
    q, s = rng["m.q_weight"], rng["m.q_scale"].astype(np.float64)
    w_model = cast_to_model_dtype(w, scheme.model_dtype).astype(np.float64)
    deq = dequantize_nk(q, s, scheme.bits, gs, w.shape[1])
    step = np.repeat(s, gs, axis=1)[:, : w.shape[1]]
    nonzero = step > 0
    assert (np.abs(deq - w_model)[nonzero] <= step[nonzero] * (0.5 + 1e-6)).all()
    codes = codes_of(q, scheme.bits, w.shape[1])[:, : w.shape[1]]
    assert (codes == (1 << scheme.bits) - 1).any()
    assert np.allclose(deq[codes == (1 << scheme.bits) - 1], (mi + 1) * step[codes == (1 << scheme.bits) - 1])


def test_kn_layout_is_the_transposed_nk_result():
    w = test_matrix(40, 96, 32, seed=3)
    _, nk = quantize_both(w, get_scheme("q4f16_1"))
    _, kn = quantize_both(w, get_scheme("q4f16_0"))
    assert kn["m.q_weight"].tobytes() == np.ascontiguousarray(nk["m.q_weight"].T).tobytes()
    assert kn["m.q_scale"].tobytes() == np.ascontiguousarray(nk["m.q_scale"].T).tobytes()


def test_chunking_does_not_change_the_result(monkeypatch):
    w = test_matrix(70, 200, 40, seed=5)
    scheme = get_scheme("q3f16_1")
    _, small = quantize_both(w, scheme)
    monkeypatch.setattr(search, "CHUNK_ELEMENTS", 1 << 20)
    monkeypatch.setattr(group, "WORKERS", 1)
    _, one = quantize_both(w, scheme)
    for name in small:
        assert small[name].tobytes() == one[name].tobytes(), name


def test_non_finite_weights_are_refused_like_mlc():
    w = test_matrix(20, 64, 32)
    w[13, 5] = np.nan
    param = SourceParam("m.weight", w.shape, ("m.weight",), "linear")
    with pytest.raises(NonFiniteWeightError) as err:
        quantize_param(param, w, get_scheme("q4f16_1"), scales="mse")
    assert "row 13" in str(err.value)
    w[13, 5] = 1e6  # finite, but overflows fp16
    with pytest.raises(NonFiniteWeightError) as err:
        quantize_param(param, w, get_scheme("q4f16_1"), scales="mse")
    assert "overflows float16" in str(err.value)


# ---------------------------------------------------------------------------------------------
# real weights


SMOLLM2_TENSORS = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                   "model.layers.7.mlp.down_proj.weight", "model.layers.29.mlp.gate_proj.weight"]


# measured total error ratios vs mlc on these tensors: mse 0.90 (int4) / 0.73 (int3); range 0.92 / 0.88
MAX_RATIO = {("mse", 4): 0.92, ("mse", 3): 0.80, ("range", 4): 0.95, ("range", 3): 0.90}


@pytest.mark.parametrize("mode", ["mse", "range"])
@pytest.mark.parametrize("scheme", [get_scheme("q4f16_1"), get_scheme("q3f16_1"), get_scheme("q4f32_1")],
                         ids=lambda s: s.name)
def test_beats_mlc_on_smollm2_weights(smollm2_dir, scheme, mode, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setattr(search, "CHUNK_ELEMENTS", 1 << 17)
    monkeypatch.setattr(group, "CHUNK_ELEMENTS", 1 << 19)
    totals = {"mlc": 0.0, "mse": 0.0}
    with safe_open(str(smollm2_dir / "model.safetensors"), "np") as f:
        for name in SMOLLM2_TENSORS:
            w = f.get_tensor(name)  # bfloat16
            role = "embedding" if "embed" in name else "linear"
            mlc, mse = quantize_both(w, scheme, role, mode)
            w_model = cast_to_model_dtype(w, scheme.model_dtype)
            err_mlc = group_errors(mlc["m.q_weight"], mlc["m.q_scale"], w_model, scheme.bits, scheme.group_size)
            err_mse = group_errors(mse["m.q_weight"], mse["m.q_scale"], w_model, scheme.bits, scheme.group_size)
            worse = err_mse > err_mlc * (1 + REL_TOL) + 1e-30
            assert not worse.any(), f"{name}: {worse.sum()} groups worse"
            assert err_mse.sum() < err_mlc.sum(), name
            totals["mlc"] += err_mlc.sum()
            totals["mse"] += err_mse.sum()
    ratio = totals["mse"] / totals["mlc"]
    print(f"{scheme.name} {mode}: total squared error {ratio:.4f} x mlc's")
    assert ratio < MAX_RATIO[mode, scheme.bits], ratio  # a mode that barely helps is a regression


# ---------------------------------------------------------------------------------------------
# the pipeline records the mode and reuses only tensors made with the same mode


def test_cli_scales_mse_is_recorded_and_reuse_needs_the_same_mode(home, tmp_path):
    from artifacts.tensor_cache import iter_tensors
    from tests.adapter_fixtures import make_tiny_adapter, make_tiny_base
    from tests.tiny_models import add_chatml_tokenizer

    base = make_tiny_base(tmp_path / "base", arch="llama", tie=False, vocab=320)
    add_chatml_tokenizer(base)
    code, _, err = run_cli("add", str(base), "-q", "q4f16_1", "--name", "base", "--no-eval", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("add", str(base), "-q", "q4f16_1", "--scales", "mse", "--name", "base-mse",
                           "--no-eval", "--quiet")
    assert code == 0, err
    lineage = {n: json.loads((home / "artifacts" / n / "personalize.json").read_text()) for n in ("base", "base-mse")}
    assert lineage["base"]["quantization_options"] == {"scales": "mlc"}
    assert lineage["base-mse"]["quantization_options"] == {"scales": "mse"}
    mlc_t, mse_t = dict(iter_tensors(home / "artifacts" / "base")), dict(iter_tensors(home / "artifacts" / "base-mse"))
    assert set(mlc_t) == set(mse_t)
    assert any(mlc_t[n].tobytes() != mse_t[n].tobytes() for n in mlc_t if n.endswith("q_scale"))

    adapter = make_tiny_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    # an mse variant on top of the mlc base artifact: nothing may be copied from it
    code, _, err = run_cli("add", str(adapter), "--base", "base", "-q", "q4f16_1", "--scales", "mse",
                           "--name", "var-mse", "--no-eval", "--quiet")
    assert code == 0, err
    var = json.loads((home / "artifacts" / "var-mse" / "personalize.json").read_text())
    assert var["quantization_options"] == {"scales": "mse"}
    assert var["base"]["artifact"] == str(home / "artifacts" / "base-mse")  # found the mse base instead
    assert var["base"]["reused_params"] > 0
    var_t = dict(iter_tensors(home / "artifacts" / "var-mse"))
    for name in mse_t:
        assert (var_t[name].tobytes() == mse_t[name].tobytes()) == ("qkv_proj" not in name), name

    code, _, err = run_cli("rm", "base-mse")
    assert code == 0, err
    code, _, err = run_cli("add", str(adapter), "--base", "base", "-q", "q4f16_1", "--scales", "mse",
                           "--name", "var-mse-2", "--no-eval", "--quiet")
    assert code == 0, err
    var2 = json.loads((home / "artifacts" / "var-mse-2" / "personalize.json").read_text())
    assert var2["base"]["reused_params"] == 0 and var2["base"]["artifact"] is None
    var2_t = dict(iter_tensors(home / "artifacts" / "var-mse-2"))
    assert all(var2_t[n].tobytes() == var_t[n].tobytes() for n in var_t)  # converted, not copied: same bytes

    code, _, err = run_cli("add", str(base), "--scales", "best", "--name", "x", "--no-eval", "--quiet")
    assert code == 2 and "best" in err, err
