"""The runtime against transformers: prefill logits, greedy decoding, one library for many fine-tunes,
refusal of mismatched artifacts, and group-quantized weights dequantized in the graph.

Tiny random models (tests/tiny_models.py, bf16 on disk so the artifact's bf16-encoded float32 is
exact). Libraries compile once per module into a shared libs dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from personalize.add import add_source
from personalize.runtime import ArtifactMismatchError, TokenRangeError, load
from tests.oracles import hf_logits, hf_state_from_artifact, read_tensor_cache, rel_err
from tests.conftest import link_shared_libs
from tests.tiny_models import add_chatml_tokenizer, make_tiny_model

IDS = [5, 17, 99, 3, 250, 11, 42, 7, 300, 1, 64, 128]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One $PERSONALIZE_HOME for the module (the artifacts below are module-scoped too), with the
    shared compiled libraries linked in like conftest's per-test `home`."""
    h = tmp_path_factory.mktemp("runtime-home")
    link_shared_libs(h)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONALIZE_HOME", str(h))
        yield h


@pytest.fixture(scope="module")
def artifacts(home, tmp_path_factory):
    """artifact(src_dir, quantization) -> artifact dir (memoized)."""
    root = tmp_path_factory.mktemp("artifacts")
    made: dict = {}

    def make(src: Path, quantization: str) -> Path:
        key = (str(src), quantization)
        if key not in made:
            made[key] = add_source(src, evaluate=False, quantization=quantization,
                                   output=root / f"{src.name}-{quantization}").path
        return Path(made[key])

    return make


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied", "tiny_mistral", "tiny_qwen2", "tiny_qwen3",
                                     "tiny_gemma2", "tiny_gemma3", "tiny_phi3"])
def test_q0f32_logits_match_transformers(fixture, request, artifacts):
    src = request.getfixturevalue(fixture)
    model = load(artifacts(src, "q0f32"))
    got = model.logits(IDS)
    ref = hf_logits(src, IDS)
    assert got.shape == ref.shape == (len(IDS), 320)
    assert rel_err(got, ref) < 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_gemma2", "tiny_gemma3",
                                     "tiny_phi3"])
def test_greedy_tokens_match_transformers(fixture, request, artifacts):
    from transformers import AutoModelForCausalLM

    src = request.getfixturevalue(fixture)
    model = load(artifacts(src, "q0f32"))
    eng = model.engine
    eng.reset()
    ours = [int(np.argmax(eng.prefill(IDS[:5])))]
    for _ in range(9):
        ours.append(int(np.argmax(eng.decode(ours[-1]))))
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    out = hf.generate(torch.tensor([IDS[:5]]), max_new_tokens=10, do_sample=False, min_new_tokens=10,
                      pad_token_id=0)
    assert ours == out[0, 5:].tolist()


def test_two_finetunes_share_one_library(home, artifacts, tiny_llama, tmp_path):
    other = make_tiny_model(tmp_path / "tiny-llama-ft", "llama", tied=True, seed=7)
    add_chatml_tokenizer(other)
    a, b = artifacts(tiny_llama, "q0f32"), artifacts(other, "q0f32")
    assert json.loads((a / "mlc-chat-config.json").read_text())["model_config"] == \
        json.loads((b / "mlc-chat-config.json").read_text())["model_config"]
    lib = Path(load(a).lib_path)  # builds (or finds) the library
    stamp = lib.stat().st_mtime_ns
    messages: list[str] = []
    mb = load(b, log=messages.append)
    assert not any("building" in m for m in messages), messages
    assert Path(mb.lib_path) == lib and lib.stat().st_mtime_ns == stamp  # (libs may be shared by other runs)
    ma = load(a)
    assert ma.lib_path == mb.lib_path
    la, lb = ma.logits(IDS), mb.logits(IDS)
    assert rel_err(lb, hf_logits(other, IDS)) < 1e-4
    assert np.abs(la - lb).max() > 0.1  # really different weights through the same library


def test_mismatched_artifacts_are_refused(artifacts, tiny_llama, tiny_llama_untied, tmp_path):
    tied_lib = load(artifacts(tiny_llama, "q0f32")).lib_path
    with pytest.raises(ArtifactMismatchError) as err:  # an extra lm_head would be silently dropped by MLC
        load(artifacts(tiny_llama_untied, "q0f32"), lib=tied_lib)
    assert err.value.field and err.value.path and err.value.hint
    # a hidden scalar (baked into the library) differs: named, with the file at fault
    bad = tmp_path / "bad-eps"
    shutil.copytree(artifacts(tiny_llama, "q0f32"), bad)
    cfg = json.loads((bad / "mlc-chat-config.json").read_text())
    cfg["model_config"]["rms_norm_eps"] = 1e-6
    (bad / "mlc-chat-config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactMismatchError) as err:
        load(bad, lib=tied_lib)
    assert err.value.field == "model_config.rms_norm_eps"
    assert err.value.path.endswith("mlc-chat-config.json")
    # a parameter missing from tensor-cache.json (the config alone looks fine): named
    gap = tmp_path / "missing-param"
    shutil.copytree(artifacts(tiny_llama, "q0f32"), gap)
    doc = json.loads((gap / "tensor-cache.json").read_text())
    doc["records"][0]["records"] = [r for r in doc["records"][0]["records"] if r["name"] != "model.norm.weight"]
    (gap / "tensor-cache.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactMismatchError) as err:
        load(gap, lib=tied_lib)
    assert err.value.field == "model.norm.weight" and err.value.path.endswith("tensor-cache.json")
    # another quantization on this library
    with pytest.raises(ArtifactMismatchError) as err:
        load(artifacts(tiny_llama, "q4f32_1"), lib=tied_lib)
    assert err.value.field == "quantization"


def test_token_ids_out_of_range_are_refused(artifacts, tiny_llama):
    model = load(artifacts(tiny_llama, "q0f32"))
    with pytest.raises(TokenRangeError):
        model.logits([1, 2, 320])
    with pytest.raises(TokenRangeError):
        model.logits([-1])
    assert model.logits([1, 2]).shape == (2, 320)  # still usable afterwards


def test_generate_applies_template_and_streams(artifacts, tiny_llama):
    model = load(artifacts(tiny_llama, "q0f32"))
    prompt_ids = model.prompt_ids([{"role": "user", "content": "hi"}])
    text = model.tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert "hi" in text and text.endswith(model.conv.roles["assistant"] + model.conv.role_empty_sep)
    full = model.generate("hi", max_tokens=8)
    assert full == "".join(model.generate("hi", max_tokens=8, stream=True))
    sampled = model.generate("hi", max_tokens=8, temperature=0.8, top_p=0.9, seed=1)
    assert sampled == model.generate("hi", max_tokens=8, temperature=0.8, top_p=0.9, seed=1)


# --- q4f32_1: the library dequantizes exactly what the converter wrote ---------------------------------

@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
def test_q4f32_logits_match_transformers_on_dequantized_weights(fixture, request, artifacts):
    src = request.getfixturevalue(fixture)
    art = artifacts(src, "q4f32_1")
    hf_config = json.loads((src / "config.json").read_text())
    ref = hf_logits(src, IDS, hf_state_from_artifact(art, hf_config))
    got = load(art).logits(IDS)
    assert rel_err(got, ref) < 1e-4
    assert rel_err(got, hf_logits(src, IDS)) > 1e-3  # the 4-bit error is really there


def test_range_scales_use_code_15_and_the_library_decodes_it(home, tiny_llama, tmp_path):
    """`--scales range` writes code 15 (+8 * scale), outside what MLC's converter emits but inside the
    4-bit field every MLC decoder reads: the library must compute with exactly that value."""
    from personalize.add import add_source

    art = add_source(tiny_llama, evaluate=False, quantization="q4f32_1", output=tmp_path / "range",
                     scales="range").path
    tensors = read_tensor_cache(art)
    codes = np.concatenate([((t[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)) & 15).ravel()
                            for n, t in tensors.items() if n.endswith("q_weight")])
    assert (codes == 15).any()
    hf_config = json.loads((tiny_llama / "config.json").read_text())
    ref = hf_logits(tiny_llama, IDS, hf_state_from_artifact(art, hf_config))
    assert rel_err(load(art).logits(IDS), ref) < 1e-4


def test_runtime_loads_without_compiler(artifacts, tiny_llama, tmp_path):
    """TVM_USE_RUNTIME_LIB=1: the library runs with only libtvm_runtime (as on a phone or the GPU box)."""
    import subprocess
    import sys

    art = artifacts(tiny_llama, "q0f32")
    lib = load(art).lib_path
    code = ("import sys, numpy as np; from personalize.runtime.engine import Engine; "
            f"e = Engine({str(lib)!r}, __import__('pathlib').Path({str(art)!r}), 320); "
            "l = e.logits([5, 17, 99]); import tvm; "
            "print('compiler' , any('libtvm_compiler' in x for x in open('/proc/self/maps').read().split())); "
            "np.save(sys.argv[1], l)")
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.npy")], env=env, capture_output=True,
                         text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compiler False" in out.stdout
    assert rel_err(np.load(tmp_path / "l.npy"), hf_logits(tiny_llama, [5, 17, 99])) < 1e-4
