"""Calibrated rounding (quantize/calibrate.py, personalize/calibration.py, `add --calibrate`).

The math is checked against an independent textbook implementation (OBS updates with an explicit
inverse Hessian, numpy fp64), against plain rounding on the calibration data, and through MLC's
decoding; the CLI end to end on a tiny model, where our compiled library's logits must equal
transformers on the artifact's dequantized weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize.calibrate import concat_rows, gptq_quantize, output_error, pack, rtn_quantize
from tests.conftest import run_cli
from tests.mlc_quant_reference import dequantize_nk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def correlated_problem(n=48, k=96, tokens=512, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    mix = rng.standard_normal((k, k)) * 0.4 + np.eye(k)
    x = rng.standard_normal((tokens, k)) @ mix
    x[:, ::7] *= 6.0  # a few strong input channels, as in real activations
    return w, x.T @ x / tokens


def textbook_gptq(w, h, bits, gs, damp=0.01):
    """OBQ/GPTQ from the paper's update rule, independent of ours: after quantizing column j,
    W[:, rest] -= (w_j - q_j) / Hinv_jj * Hinv_j,rest, then Hinv loses row/column j (Schur
    complement). Scales: the full-range scale (max/(mi+1), -min/mi) rounded up to fp16, taken
    when a group starts."""
    w = w.astype(np.float16).astype(np.float64)
    n, k = w.shape
    mi = (1 << (bits - 1)) - 1
    h = h.astype(np.float64).copy()
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    hinv = np.linalg.inv(h)
    codes = np.zeros((n, k), np.int64)
    scales = np.zeros((n, -(-k // gs)))
    for j in range(k):
        if j % gs == 0:
            grp = w[:, j : j + gs]
            hi, lo = np.maximum(grp.max(1), 0), np.maximum(-grp.min(1), 0)
            s16 = np.maximum(hi / (mi + 1), lo / mi).astype(np.float16)
            clips = (s16.astype(np.float64) * (mi + 1) < hi) | (s16.astype(np.float64) * mi < lo)
            s16 = np.where(clips, np.nextafter(s16, np.float16(np.inf)), s16)
            scales[:, j // gs] = s16.astype(np.float64)
        s = scales[:, j // gs]
        q = np.clip(np.round(w[:, j] / s), -mi, mi + 1)
        codes[:, j] = q + mi
        err = (w[:, j] - q * s) / hinv[j, j]
        w[:, j + 1 :] -= np.outer(err, hinv[j, j + 1 :])
        # remove j from the inverse: the remaining columns' inverse Hessian
        hinv[j + 1 :, j + 1 :] -= np.outer(hinv[j + 1 :, j], hinv[j, j + 1 :]) / hinv[j, j]
    return codes, scales


@pytest.mark.parametrize("bits,gs", [(4, 32), (3, 40)])
def test_gptq_matches_the_textbook_update_rule(bits, gs):
    w, h = correlated_problem(k=2 * gs + gs // 2)  # a partial last group too
    ours = gptq_quantize(w, h, "float16", bits, gs, factors=(1.0,))
    codes, scales = textbook_gptq(w, h, bits, gs)
    assert np.array_equal(ours.scales.astype(np.float64)[:, 0], scales[:, 0])  # first group: no updates yet
    assert (ours.codes == codes).mean() > 0.995  # fp32 vs fp64 may flip a near-tie
    mine = output_error(w, ours.dequantize(), h, "float16")
    ref_deq = (codes - ((1 << (bits - 1)) - 1)) * np.repeat(scales, gs, axis=1)[:, : w.shape[1]]
    assert mine == pytest.approx(output_error(w, ref_deq, h, "float16"), rel=0.02)


@pytest.mark.parametrize("bits,gs", [(4, 32), (3, 40)])
def test_calibrated_output_error_is_below_round_to_nearest(bits, gs):
    from personalize.calibration import mlc_dequantized

    for seed in range(3):
        w, h = correlated_problem(seed=seed, k=4 * gs)
        cal = gptq_quantize(w, h, "float16", bits, gs)
        e_cal = output_error(w, cal.dequantize(), h, "float16")
        e_rtn = output_error(w, rtn_quantize(w, "float16", bits, gs).dequantize(), h, "float16")
        e_mlc = output_error(w, mlc_dequantized(w, "float16", bits, gs), h, "float16")
        assert e_cal < 0.8 * e_rtn and e_cal < 0.8 * e_mlc, (e_cal, e_rtn, e_mlc)


def test_diagonal_hessian_is_plain_rounding():
    """With uncorrelated inputs there is nothing to compensate: every column is rounded to nearest
    (on the scale the weighted search picked), exactly as an independent per-element rounding."""
    w, _ = correlated_problem()
    d = np.random.default_rng(1).uniform(0.5, 3.0, w.shape[1])
    cal = gptq_quantize(w, np.diag(d), "float16", 4, 32, damp=0.0)
    s = np.repeat(cal.scales.astype(np.float64), 32, axis=1)
    expect = np.clip(np.round(w.astype(np.float16).astype(np.float64) / s), -7, 8) + 7
    assert np.array_equal(cal.codes, expect)


@pytest.mark.parametrize("bits,gs,k", [(4, 32, 96), (4, 32, 80), (3, 40, 120), (3, 40, 100)])
def test_packed_tensors_decode_like_mlc(bits, gs, k):
    w, h = correlated_problem(k=k)
    cal = gptq_quantize(w, h[:k, :k], "float16", bits, gs)
    assert cal.codes.max() <= 2**bits - 1
    q_weight, q_scale = pack(cal)
    assert q_weight.dtype == np.uint32 and q_scale.dtype == np.float16
    assert q_weight.shape == (w.shape[0], -(-k // gs) * gs // (32 // bits))  # 8 int4 / 10 int3 codes a word
    np.testing.assert_array_equal(dequantize_nk(q_weight, q_scale, bits, gs, k), cal.dequantize())
    kn_w, kn_s = pack(cal, transpose=True)
    assert np.array_equal(kn_w, q_weight.T) and np.array_equal(kn_s, q_scale.T)
    both = concat_rows([cal, cal])
    assert np.array_equal(pack(both)[0], np.concatenate([q_weight, q_weight]))


def test_every_layer_beats_mlc_rounding_on_the_calibration_data(tiny_llama):
    from personalize.calibration import builtin_text, calibrate_model, load_for_calibration

    model, tok = load_for_calibration(tiny_llama)
    result = calibrate_model(model, tok, builtin_text(), model_dtype="float16", bits=4, group_size=32)
    assert len(result.layer_errors) == 2 * 4  # qkv, o, gate_up, down per layer
    for e in result.layer_errors:
        assert e["calibrated"] <= e["mlc"], e
    assert set(result.weights) >= {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"}


@pytest.mark.parametrize("quantization", ["q4f16_1", pytest.param("q3f16_1", marks=pytest.mark.slow)])
def test_cli_add_calibrate_tiny_end_to_end(home, tiny_llama, tmp_path, quantization):
    """`add --calibrate builtin`: same tensors (names, shapes, dtypes) as MLC's rounding, other bytes,
    recorded in personalize.json and the card, passes verify, and our library's logits equal
    transformers on the dequantized weights."""
    import torch

    import personalize
    from _quality_eval import artifact_state_dict, load_model, load_state
    from artifacts.tensor_cache import read_tensor_cache

    code, _, err = run_cli("add", str(tiny_llama), "-q", quantization, "--name", "plain", "--no-eval", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("add", str(tiny_llama), "-q", quantization, "--calibrate", "builtin", "--name", "cal",
                           "--quiet")
    assert code == 0, err
    assert "layer 2/2 calibrated" in err
    plain, cal = home / "artifacts" / "plain", home / "artifacts" / "cal"
    records = {d: {r["name"]: (r["shape"], r["dtype"]) for s in read_tensor_cache(d)["records"]
                   for r in s["records"]} for d in (plain, cal)}
    assert records[plain] == records[cal]
    assert (plain / "params_shard_0.bin").read_bytes() != (cal / "params_shard_0.bin").read_bytes()
    lineage = json.loads((cal / "personalize.json").read_text())
    opts = lineage["quantization_options"]
    assert opts["scales"] == "calibrated" and opts["calibration"]["text"] == "builtin"
    assert len(opts["calibration"]["text_sha256"]) == 64 and opts["calibration"]["quality"]["linears"] == 8
    assert opts["calibration"]["quality"]["output_error_vs_mlc_total"] < 1
    assert lineage["eval"]["mean_kl"] >= 0  # the equivalence gate ran on the calibrated artifact
    card = (cal / "README.md").read_text()
    assert "not byte-identical" in card and "calibrated rounding" in card
    assert "bit-exact with `mlc_llm convert_weight`" not in card
    code, _, err = run_cli("verify", "cal")
    assert code == 0, err

    model = load_model(tiny_llama)
    load_state(model, artifact_state_dict(cal, tiny_llama))
    ids = [5, 17, 200, 33, 41, 99, 7, 250, 12]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = personalize.load(cal, device="cpu").logits(ids)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_calibrate_refuses_bad_combinations(home, tiny_llama, tmp_path):
    code, _, err = run_cli("add", str(tiny_llama), "--calibrate", "builtin", "--scales", "range", "--no-eval")
    assert code == 2 and "--calibrate" in err
    code, _, err = run_cli("add", str(tiny_llama), "--calibrate", str(tmp_path / "missing.txt"), "--no-eval")
    assert code == 2 and "missing.txt" in err
    code, _, err = run_cli("add", str(tiny_llama), "-q", "q0f16", "--calibrate", "builtin", "--no-eval")
    assert code == 2 and "nothing to calibrate" in err


@pytest.mark.slow
def test_cli_add_calibrate_smollm2(home, smollm2_dir, tmp_path):
    """SmolLM2 q4f16_1 --calibrate: every linear beats MLC's rounding on the calibration text and the
    gate's KL against the bf16 model is lower than with MLC's rounding (prompts ≠ calibration text)."""
    code, _, err = run_cli("add", str(smollm2_dir), "--calibrate", "builtin", "--name", "cal", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("add", str(smollm2_dir), "--name", "plain", "--quiet")
    assert code == 0, err
    cal = json.loads((home / "artifacts" / "cal" / "personalize.json").read_text())
    plain = json.loads((home / "artifacts" / "plain" / "personalize.json").read_text())
    assert cal["quantization_options"]["calibration"]["quality"]["output_error_vs_mlc_total"] < 0.8
    assert cal["eval"]["mean_kl"] < plain["eval"]["mean_kl"]
    code, _, err = run_cli("verify", "cal")
    assert code == 0, err


def test_adapter_calibrate_with_chat_text_never_reuses_across_modes(home, tmp_path):
    """An adapter calibrated on text in its own chat format; reuse of the base's finished tensors
    never crosses between calibrated and uncalibrated artifacts."""
    from artifacts.tensor_cache import iter_tensors
    from tests.adapter_fixtures import make_tiny_adapter, make_tiny_base
    from tests.tiny_models import add_chatml_tokenizer

    base = make_tiny_base(tmp_path / "base", arch="llama", tie=False, vocab=320)
    add_chatml_tokenizer(base)
    adapter = make_tiny_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    chat = tmp_path / "chat.txt"
    chat.write_text("".join(f"<|im_start|>user\nWhat is {i} plus {i + 1}?<|im_end|>\n<|im_start|>assistant\n"
                            f"{i} plus {i + 1} is {2 * i + 1}.<|im_end|>\n" for i in range(40)))
    for args in (("--name", "base"), ("--name", "base-cal", "--calibrate", "builtin")):
        code, _, err = run_cli("add", str(base), *args, "--no-eval", "--quiet")
        assert code == 0, err
    code, _, err = run_cli("add", str(adapter), "--base", "base", "--calibrate", str(chat), "--name", "var-cal",
                           "--no-eval", "--quiet")
    assert code == 0, err
    code, _, err = run_cli("add", str(adapter), "--base", "base-cal", "--name", "var", "--no-eval", "--quiet")
    assert code == 0, err
    lin = {n: json.loads((home / "artifacts" / n / "personalize.json").read_text()) for n in ("var-cal", "var")}
    assert lin["var-cal"]["quantization_options"]["calibration"]["text"] == "chat.txt"
    assert lin["var-cal"]["base"]["reused_params"] == 0
    assert lin["var"]["quantization_options"] == {"scales": "mlc"}
    assert lin["var"]["base"]["artifact"] == str(home / "artifacts" / "base")  # the uncalibrated one
    assert lin["var"]["base"]["reused_params"] > 0
    cal_t, plain_t = dict(iter_tensors(home / "artifacts" / "var-cal")), dict(iter_tensors(home / "artifacts" / "var"))
    assert set(cal_t) == set(plain_t)
    assert all(cal_t[n].shape == plain_t[n].shape and cal_t[n].dtype == plain_t[n].dtype for n in cal_t)
    assert any(cal_t[n].tobytes() != plain_t[n].tobytes() for n in cal_t if n.endswith("q_weight"))


def test_three_bit_add_warns_with_the_measured_numbers(home, tiny_llama):
    code, _, err = run_cli("add", str(tiny_llama), "-q", "q3f16_1", "--name", "t3", "--no-eval", "--quiet")
    assert code == 0, err
    assert "q3f16_1 loses much" in err and "perplexity 441" in err and "--calibrate" in err
    code, _, err = run_cli("add", str(tiny_llama), "-q", "q4f16_1", "--name", "t4", "--no-eval", "--quiet")
    assert code == 0 and "loses much" not in err
