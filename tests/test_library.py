"""The library: graph parameters equal the converter's list for every scheme and architecture,
the config round-trips through mlc-chat-config.json, the cache builds once, `lib` CLI commands.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from personalize.arch import get_architecture, library_key
from personalize.prebuilt import fit_prebuilt
from personalize.library import library_config_from_chat_config
from personalize.library.build import export, graph_params
from quantize import SCHEMES, get_scheme, library_params
from tests.conftest import run_cli

SCHEMES_WRITTEN = ["q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1", "q4bf16_1", "q3f16_1", "q4f16_0"]


def tiny_hf(model_type: str, tied: bool) -> dict:
    cfg = dict(model_type=model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=256,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    if model_type == "mistral":
        cfg.update(tie_word_embeddings=False, sliding_window=128)
    if model_type == "qwen3":
        cfg.update(head_dim=24, attention_bias=not tied)
    if model_type in ("gemma2", "gemma3_text"):
        cfg.update(head_dim=16, sliding_window=128, hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=30.0,
                   query_pre_attn_scalar=16)
    if model_type == "phi3":
        cfg.update(partial_rotary_factor=0.75, original_max_position_embeddings=64,
                   rope_scaling={"type": "longrope", "long_factor": [1.0] * 6, "short_factor": [1.5] * 6})
    return cfg


@pytest.mark.parametrize("quantization", SCHEMES_WRITTEN)
@pytest.mark.parametrize("model_type,tied", [("llama", True), ("llama", False), ("mistral", False),
                                             ("qwen2", True), ("qwen3", True), ("qwen3", False), ("gemma2", True),
                                             ("gemma3_text", True), ("phi3", False), ("phi3", True)])
def test_graph_takes_exactly_the_converters_params(model_type, tied, quantization):
    assert quantization in SCHEMES
    config = get_architecture(model_type).library_config(tiny_hf(model_type, tied))
    want = [p.to_json() for p in library_params(get_architecture(model_type).source_params(config),
                                                get_scheme(quantization))]
    assert graph_params(config, quantization, "llvm") == want
    assert graph_params(config, quantization, "cuda") == want


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("mistral", False), ("qwen2", True)])
def test_export_metadata(model_type, tied):
    config = get_architecture(model_type).library_config(tiny_hf(model_type, tied))
    meta = export(config, "q4f16_0", "llvm").metadata  # export checks its params against the converter's
    assert meta["library_key"] == library_key(config, "q4f16_0")
    assert meta["config"] == config.compiled and meta["model_type"] == model_type
    if model_type == "mistral":  # sliding window honoured by capping the context at the window
        assert meta["context_window_size"] == 128


def test_llama3_rope_scaling_is_compiled_in():
    hf = tiny_hf("llama", True)
    hf["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64}
    config = get_architecture("llama").library_config(hf)
    meta = export(config, "q0f32", "llvm").metadata
    assert meta["config"]["rope_scaling"]["factor"] == 8.0


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied", "tiny_mistral", "tiny_qwen2", "tiny_qwen3",
                                     "tiny_gemma2", "tiny_gemma3", "tiny_phi3"])
def test_library_config_round_trips_through_chat_config(fixture, request, tmp_path):
    from personalize.add import add_source

    src = request.getfixturevalue(fixture)
    art = add_source(src, evaluate=False, quantization="q4f16_1", output=tmp_path / "a").path
    chat = json.loads((art / "mlc-chat-config.json").read_text())
    hf = json.loads((src / "config.json").read_text())
    # what add compiles: the architecture's config, sized for the fitting prebuilt library (none for these
    # tiny shapes), its prefill chunk never beyond the attention window
    direct, prebuilt = fit_prebuilt(get_architecture(hf["model_type"]).library_config(hf), "q4f16_1")
    assert prebuilt["library"] is None
    assert direct.prefill_chunk_size <= direct.context_window_size
    rebuilt = library_config_from_chat_config(chat)
    assert rebuilt == direct
    assert library_key(rebuilt, "q4f16_1") == json.loads((art / "personalize.json").read_text())["library_key"]


@pytest.mark.slow  # the one test that always compiles (a private libs dir), q0f32 as the cheapest scheme
def test_lib_build_caches_and_lists(tiny_llama, tmp_path, monkeypatch):
    """Production CPU pipeline, once: build, embedded metadata, second build is a cache hit, lib list."""
    from personalize.add import add_source

    home = tmp_path / "private-home"  # its own libs dir: this test is about the cache itself
    monkeypatch.setenv("PERSONALIZE_HOME", str(home))
    from personalize.runtime.engine import read_library_metadata

    art = add_source(tiny_llama, evaluate=False, quantization="q0f32", output=tmp_path / "art").path
    code, out, err = run_cli("lib", "build", str(art), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["built"] is True and doc["target"] == "llvm"
    meta = read_library_metadata(doc["path"])
    assert meta["quantization"] == "q0f32" and meta["library_key"] == doc["library_key"]
    assert meta["params"][0] == {"name": "model.embed_tokens.weight", "shape": ["vocab_size", 64],
                                 "dtype": "float32"}
    code, out, _ = run_cli("lib", "build", str(art), "--json")
    assert code == 0 and json.loads(out)["built"] is False
    code, out, _ = run_cli("lib", "list", "--json")
    libs = json.loads(out)["libraries"]
    assert [lib["path"] for lib in libs] == [doc["path"]]
    assert not list((home / "libs").glob(".build-*"))  # no temp files left behind
    code, out, err = run_cli("generate", str(art), "hi", "--max-tokens", "4")
    assert code == 0, err


def test_library_file_name_follows_the_graph_source(tmp_path, monkeypatch):
    """The cache key hashes the source of the modules that define the graph: an edit to one of them
    (here a stand-in module) names a different library file, so a stale .so is never reused."""
    from personalize.library import cache

    # the real list covers the graph, its kernels, the export/compile passes and the architectures
    assert {"personalize.library.model", "personalize.library.cpu_kernels", "personalize.library.build",
            "personalize.arch"} <= set(cache.GRAPH_MODULES)
    pkg = tmp_path / "graphstandin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    kernel = pkg / "kernels.py"
    kernel.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cache, "GRAPH_MODULES", ("graphstandin", "personalize.library.model"))

    def name() -> str:
        cache.graph_code_hash.cache_clear()
        return cache.library_filename("k", "q4f16_1", "llama", "llvm")

    try:
        before = name()
        assert name() == before  # stable for the same code
        kernel.write_text("SCALE = 2\n")
        assert name() != before
    finally:
        cache.graph_code_hash.cache_clear()


def test_cli_refuses_a_mismatch_in_one_line(home, tiny_llama, tiny_llama_untied, tmp_path):
    from personalize.add import add_source

    tied = add_source(tiny_llama, evaluate=False, quantization="q4f16_1", output=tmp_path / "tied").path
    untied = add_source(tiny_llama_untied, evaluate=False, quantization="q4f16_1",
                        output=tmp_path / "untied").path
    code, out, _ = run_cli("lib", "build", str(tied), "--json")
    lib = json.loads(out)["path"]
    # the q4f16 library runs (float32 activations on CPU): finite logits of the right shape
    import personalize

    logits = personalize.load(tied).logits([1, 2, 3])
    assert logits.shape == (3, 320) and np.isfinite(logits).all()
    code, out, err = run_cli("generate", str(untied), "hi", "--lib", lib)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "tie_word_embeddings" in lines[0] and "mlc-chat-config.json" in lines[0], err
