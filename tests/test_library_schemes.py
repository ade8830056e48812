"""Every advertised quantization through the compiled library (CPU/llvm) against transformers.

For each scheme: `add_source` converts a tiny untied llama, `load` runs it on its own library
(compiled once per scheme, cached in $PERSONALIZE_TEST_LIBS), and its logits are compared with
transformers in float32 on the artifact's OWN weights, decoded by the independent oracle
(tests/oracles.py, written from mlc-format.md: NK and KN layouts, 3-bit codes 10 to a word, 40-wide
groups, f16/bf16/f32 scales). The CPU library computes activations in float32 for every scheme, so the
only differences left are float32 summation order: measured max relative error <= 2e-6 on every scheme,
prefill and decode (tolerance 2e-5; the quantization error itself is > 1e-3), and the argmax agrees at
every position.

Untied, so lm_head is a Linear too (transposed in KN, dense in q4f16_2). hidden 64 and intermediate 96
are multiples of 32 but not of 40, so the 3-bit schemes run with padded tail groups; one more model
(intermediate 80) gives the 4-bit NK and KN kernels a K that is not a multiple of 32.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from personalize.add import add_source
from personalize.runtime import load
from tests.conftest import link_shared_libs
from tests.oracles import GROUP_FORMATS, hf_logits, hf_state_from_artifact, read_tensor_cache, rel_err
from tests.tiny_models import add_chatml_tokenizer, make_tiny_model

# README: `q0f32 q0f16 q0bf16 q4f16_1 q4f32_1 q4bf16_1 q3f16_1 q4f16_0` (also `q3f16_0 q4bf16_0 q4f16_2`)
ADVERTISED = ["q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1", "q4bf16_1", "q3f16_1", "q4f16_0",
              "q3f16_0", "q4bf16_0", "q4f16_2"]
IDS = [5, 17, 99, 3, 250, 11, 42, 7, 300, 1, 64, 128]
PREFIX = 8  # decode (the m == 1 kernels) checked on IDS[PREFIX:] after prefilling IDS[:PREFIX]
TOLERANCE = 2e-5  # measured <= 2e-6 (float32 compute on CPU for every scheme)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("schemes-home")
    link_shared_libs(h)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONALIZE_HOME", str(h))
        yield h


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scheme-src")
    out = {"untied": make_tiny_model(root / "untied", "llama", tied=False, seed=1),
           "odd-k": make_tiny_model(root / "odd-k", "llama", tied=False, seed=4, intermediate_size=80,
                                    num_hidden_layers=1)}
    for d in out.values():
        add_chatml_tokenizer(d)
    return out


def test_every_advertised_scheme_is_covered():
    from quantize.schemes import SCHEMES

    assert sorted(ADVERTISED) == sorted(SCHEMES)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert all(f"`{s}" in readme or f" {s}" in readme for s in ADVERTISED)


def check_layout(tensors: dict, quantization: str, hf_config: dict) -> None:
    """The records the oracle decodes really are what the scheme says (dtype, transposed or not)."""
    model_dtype = {"f16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32}[
        quantization[2:].split("_")[0]]
    assert tensors["model.norm.weight"].dtype == model_dtype
    fmt = GROUP_FORMATS.get(quantization)
    hidden, vocab = hf_config["hidden_size"], hf_config["vocab_size"]
    if fmt is None:
        assert not any(n.endswith("q_weight") for n in tensors)
        return
    n_up = 2 * hf_config["intermediate_size"]
    qw = tensors["model.layers.0.mlp.gate_up_proj.q_weight"]
    words = -(-hidden // fmt.group) * fmt.group // (32 // fmt.bits)
    assert qw.dtype == np.uint32
    assert qw.shape == ((words, n_up) if fmt.layout == "KN" else (n_up, words))
    if quantization == "q4f16_2":  # embedding and lm_head stay float16
        assert tensors["model.embed_tokens.weight"].dtype == np.float16
        assert tensors["lm_head.weight"].shape == (vocab, hidden)
    else:
        assert tensors["model.embed_tokens.q_weight"].shape == (vocab, words)  # never transposed
        assert tensors["model.embed_tokens.q_scale"].dtype == model_dtype
        assert tensors["lm_head.q_weight"].shape == ((words, vocab) if fmt.layout == "KN" else (vocab, words))


@pytest.mark.parametrize("source,quantization", [("untied", q) for q in ADVERTISED]
                         + [("odd-k", "q4f16_1"), ("odd-k", "q4f16_0")])
def test_library_logits_match_transformers_on_the_artifacts_weights(home, sources, tmp_path, source,
                                                                      quantization, record_property):
    src = sources[source]
    art = add_source(src, evaluate=False, quantization=quantization, output=tmp_path / quantization).path
    hf_config = json.loads((src / "config.json").read_text())
    check_layout(read_tensor_cache(art), quantization, hf_config)
    ref = hf_logits(src, IDS, hf_state_from_artifact(art, hf_config))

    model = load(art)
    got = model.logits(IDS)  # prefill kernels (m > 1), every position
    eng = model.engine
    eng.reset()
    eng.prefill(IDS[:PREFIX])
    decoded = np.stack([eng.decode(t) for t in IDS[PREFIX:]])  # decode kernels (m == 1)
    eng.reset()

    err_prefill, err_decode = rel_err(got, ref), rel_err(decoded, ref[PREFIX:])
    record_property("rel_err", {"prefill": err_prefill, "decode": err_decode})
    print(f"\n{source} {quantization}: max rel err prefill {err_prefill:.2e} decode {err_decode:.2e}")
    assert got.shape == ref.shape == (len(IDS), hf_config["vocab_size"])
    assert err_prefill < TOLERANCE and err_decode < TOLERANCE
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert (decoded.argmax(-1) == ref[PREFIX:].argmax(-1)).all()
    if quantization in GROUP_FORMATS:  # the quantization error is really there (the oracle is no no-op)
        assert rel_err(got, hf_logits(src, IDS)) > 1e-3
