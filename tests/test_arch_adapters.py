"""LoRA adapters on qwen3, gemma2, gemma3_text and phi3 bases: `personalize add` merges exactly what peft's own
merge_and_unload gives, laid out as MLC's loader would lay out that merged checkpoint, and the
equivalence gate runs the artifact through our library.

The layout oracle is test_convert_exact's table written from MLC's loaders (not our arch code).
The bases are float32 and the artifact q0f32 (stored as MLC's f32-to-bf16): every tensor must equal
peft's merge, fused and transformed, rounded to bfloat16 - up to one bf16 step where float32
summation order differs. The tiny configs equal tests/test_runtime.py's, so the gate reuses the
q0f32 libraries compiled there (PERSONALIZE_TEST_LIBS).
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from artifacts.tensor_cache import iter_tensors
from tests.adapter_fixtures import make_tiny_adapter, peft_merged_state_dict
from tests.conftest import run_cli
from tests.test_convert_exact import mlc_params
from tests.tiny_models import add_chatml_tokenizer, make_tiny_model

SEPARATE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {  # model_type: (tied base, LoRA targets)
    "qwen3": (True, SEPARATE),
    "gemma2": (True, SEPARATE),
    "gemma3_text": (True, SEPARATE),
    "phi3": (False, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),  # fused in the checkpoint
}


def mlc_layout(merged: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, sources, role in mlc_params(cfg, cfg["model_type"]):
        w = np.concatenate([merged[s] for s in sources], axis=0)
        out[name] = w + 1 if role == "add_one" else w
    return out


@pytest.mark.parametrize("model_type", list(CASES))
def test_adapter_merges_like_peft_and_passes_the_gate(home, tmp_path, model_type):
    tied, targets = CASES[model_type]
    base = make_tiny_model(tmp_path / f"{model_type}-base", model_type, tied=tied, dtype="float32",
                           norm_grid=1 / 32 if model_type.startswith("gemma") else None)
    add_chatml_tokenizer(base)
    adapter = make_tiny_adapter(base, tmp_path / "adapter", target_modules=targets)
    code, out, err = run_cli("add", str(adapter), "--base", str(base), "-q", "q0f32", "--name", f"{model_type}-lora",
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    cfg = json.loads((base / "config.json").read_text())
    want = mlc_layout(peft_merged_state_dict(base, adapter), cfg)
    ours = dict(iter_tensors(doc["path"]))
    assert set(ours) == set(want)
    changed = 0
    for name, ref in want.items():
        ref16 = ref.astype(ml_dtypes.bfloat16)
        step = np.abs(np.spacing(ref.astype(np.float32))) * 2 ** 16  # one bf16 step
        diff = np.abs(ours[name].astype(np.float32) - ref16.astype(np.float32))
        assert (diff <= step).all(), (name, float(diff.max()))
        changed += name.endswith("proj.weight")
    assert changed
    # the gate ran the artifact through our compiled library against transformers (a q0 miss fails the
    # add); what is left is the bf16 storage of the float32 merge on a random, near-flat tiny model
    ev = doc["eval"]
    assert ev["top1_agreement"] >= 0.95 and ev["mean_kl"] < 1e-3, ev
