"""`personalize add ./adapter` from the CLI, for every adapter kind, against peft's own merge.

The artifact is written in q0f16, so every merged tensor must equal peft's merge_and_unload result
(float32) rounded to float16 - up to one float16 step where fp32 summation order differs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from artifacts.tensor_cache import iter_tensors
from tests.adapter_fixtures import make_tiny_adapter, make_tiny_base, peft_merged_state_dict
from tests.conftest import run_cli
from tests.tiny_models import add_chatml_tokenizer

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

KINDS = {
    "lora": dict(target_modules=LINEAR),
    "rslora": dict(target_modules=LINEAR, use_rslora=True, r=8, lora_alpha=4),
    "patterns": dict(target_modules=LINEAR, r=4, lora_alpha=8, rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
                     alpha_pattern={"v_proj": 3, "up_proj": 12}),
    "dora": dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True),
    "modules_to_save": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]),
    "embedding_lora": dict(target_modules=["embed_tokens", "q_proj"]),
}


def mlc_view(merged: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """peft's merged HF state dict, fused the way MLC names the library parameters."""
    out = {"model.embed_tokens.weight": merged["model.embed_tokens.weight"], "model.norm.weight": merged["model.norm.weight"]}
    if "lm_head.weight" in merged:
        out["lm_head.weight"] = merged["lm_head.weight"]
    for i in range(layers):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out[f"{a}.qkv_proj.weight"] = np.concatenate([merged[f"{a}.{x}_proj.weight"] for x in "qkv"])
        out[f"{a}.o_proj.weight"] = merged[f"{a}.o_proj.weight"]
        out[f"{m}.gate_up_proj.weight"] = np.concatenate([merged[f"{m}.gate_proj.weight"], merged[f"{m}.up_proj.weight"]])
        out[f"{m}.down_proj.weight"] = merged[f"{m}.down_proj.weight"]
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{i}.{n}.weight"] = merged[f"model.layers.{i}.{n}.weight"]
    return out


def assert_equals_peft_fp16(artifact: Path, merged: dict[str, np.ndarray], layers: int = 2) -> float:
    ours = dict(iter_tensors(artifact))
    want = mlc_view(merged, layers)
    assert set(ours) == set(want)
    worst = 0.0
    for name, ref in want.items():
        got = ours[name].astype(np.float32)
        ref16 = ref.astype(np.float16).astype(np.float32)
        assert got.shape == ref16.shape, name
        step = np.abs(np.spacing(ref16.astype(np.float16))).astype(np.float32)
        diff = np.abs(got - ref16)
        assert (diff <= step + 1e-7).all(), (name, float(diff.max()))
        worst = max(worst, float(diff.max()))
    return worst


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = make_tiny_base(tmp_path_factory.mktemp("adapter-cli") / "base", arch="llama", tie=False, vocab=320)
    add_chatml_tokenizer(d)
    return d


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapter_kind_converts_and_matches_peft(home, tmp_path, base, kind):
    adapter = make_tiny_adapter(base, tmp_path / kind, **KINDS[kind])
    out = tmp_path / "artifact"
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f16", "--output", str(out),
                           "--no-eval", "--quiet")
    assert code == 0, err
    assert_equals_peft_fp16(out, peft_merged_state_dict(base, adapter))
    lineage = json.loads((out / "personalize.json").read_text())
    assert lineage["source"]["kind"] == "adapter"
    assert lineage["adapter"]["config_sha256"]
    assert lineage["base"]["content_sha256"]


def test_bin_adapter(home, tmp_path, base):
    adapter = make_tiny_adapter(base, tmp_path / "bin", target_modules=LINEAR, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file()
    out = tmp_path / "artifact"
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f16", "--output", str(out),
                           "--no-eval", "--quiet")
    assert code == 0, err
    assert_equals_peft_fp16(out, peft_merged_state_dict(base, adapter))


def test_resized_vocab_carries_the_adapters_tokenizer(home, tmp_path, base):
    adapter = make_tiny_adapter(base, tmp_path / "resized", resize_to=336, target_modules=["q_proj"],
                                modules_to_save=["embed_tokens", "lm_head"])
    # the fine-tune's tokenizer has added tokens: it goes into the artifact, not the base's
    add_chatml_tokenizer(adapter)
    tok = json.loads((adapter / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": 259, "content": "<|tool|>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (adapter / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "artifact"
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f16", "--output", str(out),
                           "--no-eval", "--quiet")
    assert code == 0, err
    assert_equals_peft_fp16(out, peft_merged_state_dict(base, adapter, resize_to=336))
    chat = json.loads((out / "mlc-chat-config.json").read_text())
    assert chat["vocab_size"] == 336
    assert "<|tool|>" in (out / "tokenizer.json").read_text()


def test_gate_on_by_default_numbers_recorded(home, tmp_path, base):
    adapter = make_tiny_adapter(base, tmp_path / "gated", target_modules=LINEAR, use_rslora=True)
    code, out, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f32", "--name", "gated", "--json")
    assert code == 0, err
    doc = json.loads(out)
    ev = doc["eval"]
    assert ev["top1_agreement"] >= 0.99 and ev["mean_kl"] < 1e-3, ev
    card = (Path(doc["path"]) / "README.md").read_text()
    # the gate's numbers themselves, in the card's table rows (the labels alone are always there)
    assert f"| top-1 agreement | {ev['top1_agreement']:.3f} |" in card, card
    assert f"| mean KL(reference ‖ artifact) per token | {ev['mean_kl']:.4g} |" in card, card
    code, out, err = run_cli("eval", "gated", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert abs(again["mean_kl"] - ev["mean_kl"]) < 1e-6
    card = (Path(doc["path"]) / "README.md").read_text()
    assert f"| mean KL(reference ‖ artifact) per token | {again['mean_kl']:.4g} |" in card, card
    vram = json.loads(card.split("```json\n")[1].split("```")[0])["estimated_vram_bytes"]
    assert isinstance(vram, int) and vram > 0, vram  # eval re-renders from the directory: the estimate stays


def test_gate_fails_a_wrong_merge(home, tmp_path, base, monkeypatch):
    """A merge bug (here: rsLoRA scaled as plain LoRA, the llama.cpp mistake) fails a q0 add, writes nothing."""
    import ingest.merge as merge

    adapter = make_tiny_adapter(base, tmp_path / "rs", target_modules=LINEAR, use_rslora=True, r=16, lora_alpha=4)
    original = merge.merge_tensor

    def wrong(adapter_obj, name, arr):
        out = original(adapter_obj, name, arr)
        return arr.astype(np.float32) + 4.0 * (out - arr.astype(np.float32))  # alpha/r instead of alpha/sqrt(r)

    monkeypatch.setattr("personalize.adapter_steps.merge_tensor", wrong)
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f32", "--name", "bad")
    assert code == 2, err
    assert "equivalence gate failed" in err
    assert not (home / "artifacts" / "bad").exists()
    assert [p for p in (home / "artifacts").iterdir()] == []


def test_refusals(home, tmp_path, base):
    tied = make_tiny_base(tmp_path / "tied", arch="llama", tie=True, vocab=320)
    head = make_tiny_adapter(tied, tmp_path / "head", target_modules=["q_proj", "lm_head"])
    code, _, err = run_cli("add", str(head), "--base", str(tied), "--no-eval", "--quiet", "--name", "x")
    assert code == 2 and "lm_head" in err and "tied" in err, err

    other = make_tiny_base(tmp_path / "wide", arch="llama", hidden=48, vocab=320)
    adapter = make_tiny_adapter(other, tmp_path / "for-wide", target_modules=["q_proj"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "--no-eval", "--quiet", "--name", "x")
    assert code == 2 and "q_proj" in err, err

    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "base_model_name_or_path": str(base)}))
    code, _, err = run_cli("add", str(ia3), "--no-eval", "--quiet", "--name", "x")
    assert code == 2 and "IA3" in err and "not supported" in err, err

    lost = make_tiny_adapter(base, tmp_path / "lost", target_modules=["q_proj"])
    cfg = json.loads((lost / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some-org/not-here"
    (lost / "adapter_config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli("add", str(lost), "--no-eval", "--quiet", "--name", "x")
    assert code == 2 and "not-here" in err and "--base" in err, err
    assert not (home / "artifacts").exists() or list((home / "artifacts").iterdir()) == []


def test_base_differing_from_recorded_base_needs_force(home, tmp_path, base):
    recorded = tmp_path / "recorded"
    shutil.copytree(base, recorded)
    adapter = make_tiny_adapter(recorded, tmp_path / "a", target_modules=["q_proj"])
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(recorded)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    # the recorded base says 3 layers; the base given says 2 (the same tensors fit layers 0-1)
    conf = json.loads((recorded / "config.json").read_text())
    conf["num_hidden_layers"] = 3
    (recorded / "config.json").write_text(json.dumps(conf))
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "--no-eval", "--quiet", "--name", "v")
    assert code == 2 and "num_hidden_layers" in err and "--force-base" in err, err
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "--no-eval", "--quiet", "--name", "v",
                           "--force-base")
    assert code == 0, err


def test_variant_reuses_untouched_tensors_of_registered_base(home, tmp_path, base):
    code, _, err = run_cli("add", str(base), "-q", "q4f16_1", "--name", "base", "--no-eval", "--quiet")
    assert code == 0, err
    adapter = make_tiny_adapter(base, tmp_path / "small", target_modules=["q_proj"])
    code, out, err = run_cli("add", str(adapter), "--base", "base", "-q", "q4f16_1", "--name", "var", "--no-eval",
                             "--json")
    assert code == 0, err
    lineage = json.loads((home / "artifacts" / "var" / "personalize.json").read_text())
    assert lineage["base"]["reused_params"] > 0
    base_t = dict(iter_tensors(home / "artifacts" / "base"))
    var_t = dict(iter_tensors(home / "artifacts" / "var"))
    for name in base_t:
        same = base_t[name].tobytes() == var_t[name].tobytes()
        assert same == ("qkv_proj" not in name), name
    # reusing must give exactly what a full conversion gives
    full = tmp_path / "full"
    code, _, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q4f16_1", "--output", str(full),
                           "--no-eval", "--quiet")
    assert code == 0, err
    assert json.loads((full / "tensor-cache.json").read_text())["records"] == \
        json.loads((home / "artifacts" / "var" / "tensor-cache.json").read_text())["records"]
