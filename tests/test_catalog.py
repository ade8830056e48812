"""The catalog of MLC's prebuilt WebGPU libraries, checked against what MLC itself publishes.

The hand-written base configs (scripts/build_catalog.py) are checked against the metadata embedded in
MLC's real v0_2_48 libraries (tests/data/prebuilt/metadata/) and the real SmolLM2-135M-Instruct config;
the WebLLM records against the facts measured in the browser (which npm version loads which directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import (
    config_differences,
    directories,
    directory_for_webllm,
    find_by_file,
    find_by_metadata,
    find_libraries,
    libraries,
    load_catalog,
    normalize_config,
    why_no_library,
)
from catalog.library_metadata import LibraryMetadataError, metadata_from_bytes, read_library_metadata
from tests.shaped_models import hf_config

DATA = Path(__file__).parent / "data" / "prebuilt"
METADATA = sorted((DATA / "metadata").glob("*.json"))
QWEN_WASM = DATA / "v0_2_48" / "Qwen2-0.5B-Instruct-q4f32_1-ctx4k_cs1k-webgpu.wasm"


def library_config(base: str) -> tuple[str, dict]:
    """(model_type, model_config) exactly as `add` derives it from the base's config.json."""
    from personalize.arch import get_architecture

    cfg = hf_config(base)
    return cfg["model_type"], get_architecture(cfg["model_type"]).library_config(cfg).model_config


# ----------------------------------------------------------------------------- against MLC's metadata
@pytest.mark.parametrize("path", METADATA, ids=lambda p: p.stem)
def test_catalog_shapes_match_the_metadata_mlc_embeds(path):
    """Every metadata file whose library WebLLM lists: the catalog's base config gives the library's
    KV-cache geometry, limits, embedding shape and (symbolic or not) vocab dimension."""
    meta = json.loads(path.read_text())
    entries = find_by_file(path.stem + ".wasm")
    if not entries:
        # TinyLlama q0f32, phi-1_5, stablelm: not in WebLLM's records from 0.2.51 on, or an unsupported arch
        assert meta["model_type"] not in {"qwen2", "mistral"}, path.name
        return
    for lib in entries:
        c = lib.config
        assert lib.model_type == meta["model_type"] and lib.quantization == meta["quantization"]
        kv = meta["kv_cache"]
        assert (c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == \
            (kv["num_hidden_layers"], kv["num_attention_heads"], kv["num_key_value_heads"], kv["head_dim"])
        assert lib.prefill_chunk_size == meta["prefill_chunk_size"]
        if lib.directory == "v0_2_48":  # the metadata was extracted from these very files
            assert lib.compiled_context_window_size == meta["context_window_size"]
        embed = next(p for p in meta["params"] if "embed" in p["name"] or "embd" in p["name"])
        assert lib.symbolic_vocab == isinstance(embed["shape"][0], str)
        if not lib.symbolic_vocab:
            assert embed["shape"][0] == c["vocab_size"]
        assert find_by_metadata(meta), "the metadata alone finds its catalog entry"
        assert lib in find_by_metadata(meta)


def test_smollm2_config_matches_the_real_model(smollm2_dir):
    """The hand-written SmolLM2-135M values equal the real model's config.json (derived the way add does)."""
    from personalize.arch import get_architecture

    real = json.loads((Path(smollm2_dir) / "config.json").read_text())
    mc = get_architecture("llama").library_config(real).model_config
    (lib,) = [x for x in find_libraries("llama", mc, "q0f16") if x.directory == "v0_2_48"]
    assert lib.base_model == "SmolLM2-135M-Instruct"
    assert config_differences(lib, "llama", normalize_config("llama", mc)) == []


def test_webllm_ranges_are_the_measured_ones():
    """npm version -> library directory, as measured in the browser (shared/prebuilt/README.md)."""
    assert directory_for_webllm("0.2.79") == "v0_2_48" and directory_for_webllm("0.2.51") == "v0_2_48"
    assert directory_for_webllm("0.2.80") == directory_for_webllm("0.2.82") == "v0_2_80"
    assert directory_for_webllm("0.2.84") == "v0_2_84/base" and directory_for_webllm("0.2.86") == "v0_2_86/base"
    assert directory_for_webllm("0.2.46") is None
    assert directories()[0] == "v0_2_48" and directories()[-1] == "v0_2_86/base"
    prefix = load_catalog()["lib_url_prefix"]
    for lib in libraries():
        assert lib.url == f"{prefix}{lib.directory}/{lib.file}"
        assert lib.records and lib.vram_required_MB > 0 and lib.prefill_chunk_size == 1024


def test_mlc_serves_qwen25_finetunes_on_the_qwen2_library_and_so_do_we():
    """MLC's own records run Qwen2.5-0.5B-Instruct on the Qwen2-0.5B library; the config match agrees."""
    (lib,) = [x for x in find_by_file("Qwen2-0.5B-Instruct-q4f16_1-ctx4k_cs1k-webgpu.wasm") if x.directory == "v0_2_48"]
    assert "Qwen2.5-0.5B-Instruct-q4f16_1-MLC" in [r["model_id"] for r in lib.records]
    model_type, mc = library_config("Qwen2-0.5B-Instruct")  # Qwen2.5-0.5B has the same published config values
    assert lib in find_libraries(model_type, mc, "q4f16_1")


# ----------------------------------------------------------------------------- finding by config
def test_found_by_config_not_by_hub_id(tmp_path):
    """A local copy with no Hub id anywhere still finds its library, newest directory first."""
    from ingest.source import read_json
    from tests.shaped_models import write_config_only

    cfg = hf_config("Llama-3.2-1B-Instruct")
    cfg.pop("_name_or_path", None)
    model_dir = write_config_only(tmp_path / "my-local-copy", cfg)
    from personalize.arch import get_architecture

    mc = get_architecture("llama").library_config(read_json(model_dir / "config.json")).model_config
    found = find_libraries("llama", mc, "q4f16_1")
    assert [x.directory for x in found] == list(reversed(directories()))
    assert {x.base_model for x in found} == {"Llama-3.2-1B-Instruct"}
    assert found[0].context_window_size == 4096


@pytest.mark.parametrize("change,field", [({"rope_theta": 10000.0}, "rope_theta"),
                                          ({"rms_norm_eps": 1e-6}, "norm_eps"),
                                          ({"rope_scaling": None}, "rope_scaling"),
                                          ({"tie_word_embeddings": False}, "tie_word_embeddings")])
def test_a_compiled_in_difference_finds_no_library_and_says_why(change, field):
    from personalize.arch import get_architecture

    cfg = hf_config("Llama-3.2-1B-Instruct", **change)
    mc = get_architecture("llama").library_config(cfg).model_config
    assert find_libraries("llama", mc, "q4f16_1") == []
    reason = why_no_library("llama", mc, "q4f16_1")
    assert reason.startswith("no MLC prebuilt WebGPU library for llama") and field in reason
    assert "mlc_llm compile" in reason


def test_mistral_v01_theta_does_not_fit_the_v03_library():
    """MLC lists v0.1-based fine-tunes (theta 1e4) on the v0.3 library (theta 1e6); by config they differ."""
    model_type, mc = library_config("Mistral-7B-Instruct-v0.3")
    assert find_libraries(model_type, mc, "q4f32_1")
    assert find_libraries(model_type, {**mc, "position_embedding_base": 10000.0}, "q4f32_1") == []


def test_smollm2_135m_q4_has_no_library_and_the_reason_names_the_quantizations():
    model_type, mc = library_config("SmolLM2-135M-Instruct")
    assert find_libraries(model_type, mc, "q4f16_1") == []
    reason = why_no_library(model_type, mc, "q4f16_1")
    assert "SmolLM2-135M-Instruct" in reason and "q0f16" in reason and "--quantization q0f16" in reason


def test_tiny_shapes_name_the_nearest_and_the_hidden_size():
    reason = why_no_library("llama", {"hidden_size": 72, "intermediate_size": 96, "num_attention_heads": 4,
                                      "num_hidden_layers": 2, "vocab_size": 320, "rms_norm_eps": 1e-5,
                                      "position_embedding_base": 10000.0}, "q4f16_1")
    assert reason.startswith("no MLC prebuilt WebGPU library for llama with hidden 72") and "(q4f16_1)" in reason


# ----------------------------------------------------------------------------- reading library metadata
def test_reads_the_metadata_of_mlcs_real_wasm():
    meta = read_library_metadata(QWEN_WASM)
    assert meta == json.loads((DATA / "metadata" / (QWEN_WASM.stem + ".json")).read_text())


def test_reads_metadata_inside_a_tar_and_rejects_other_files(tmp_path):
    import io
    import tarfile

    doc = json.loads((DATA / "metadata" / (QWEN_WASM.stem + ".json")).read_text())
    blob = b"\x7fELF\x00junk{\"not\": 1}\x00" + json.dumps(doc).encode() + b"\x00more"
    tar = tmp_path / "lib.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("lib0.o")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    assert read_library_metadata(tar) == doc
    (tmp_path / "x.so").write_bytes(b"\x7fELF" + b"\x00" * 100)
    with pytest.raises(LibraryMetadataError, match="no MLC model metadata"):
        read_library_metadata(tmp_path / "x.so")
    with pytest.raises(LibraryMetadataError, match="does not exist"):
        read_library_metadata(tmp_path / "missing.wasm")
    with pytest.raises(LibraryMetadataError):
        metadata_from_bytes(b'{"model_type": "llama", "params": ')  # truncated JSON


# ----------------------------------------------------------------------------- the new architectures' bases
NEW_BASES = [("gemma-2-2b-it", "q4f16_1"), ("gemma-2-2b-it", "q4f32_1"), ("gemma-2-9b-it", "q4f16_1"),
             ("gemma3-1b-it", "q4f16_1"), ("Phi-3-mini-4k-instruct", "q4f16_1"),
             ("Phi-3.5-mini-instruct", "q4f16_1"), ("Phi-3.5-mini-instruct", "q4f32_1"),
             ("Phi-4-mini-instruct", "q4f16_1"), ("Phi-4-mini-instruct", "q4f32_1"), ("Qwen3-0.6B", "q4f16_1"),
             ("Qwen3-0.6B", "q0f16"), ("Qwen3-1.7B", "q4f32_1"), ("Qwen3-4B", "q4f16_1"),
             ("Qwen3-8B", "q4f16_1")]


@pytest.mark.parametrize("base,quant", NEW_BASES, ids=lambda x: x)
def test_a_new_architecture_base_finds_its_library_at_add(base, quant):
    """`add`'s choice (fit_prebuilt) for a full-shape config with the base's published values: the
    catalog's library of that base, newest directory, with MLC's context 4096 and prefill chunk 1024."""
    from personalize.arch import get_architecture
    from personalize.prebuilt import fit_prebuilt

    cfg = hf_config(base)
    config, record = fit_prebuilt(get_architecture(cfg["model_type"]).library_config(cfg), quant)
    assert record["library"] is not None, record.get("reason")
    assert record["base_model"] == base and record["quantization"] == quant
    assert record["library"].startswith("v0_2_86/base/") and record["url"].endswith(f"/{base}-{quant}_cs1k-webgpu.wasm")
    # Gemma 3's chunk is capped at its 512-token sliding window (prebuilt.with_limits); a chunk smaller than
    # the library's compiled 1024 runs (check --lib accepts it), a larger one would not.
    chunk = 512 if cfg["model_type"] == "gemma3_text" else 1024
    assert (record["context_window_size"], config.context_window_size, config.prefill_chunk_size) == (4096, 4096, chunk)


@pytest.mark.parametrize("base,change,field", [
    ("gemma-2-2b-it", {"attn_logit_softcapping": 40.0}, "attn_logit_softcapping"),
    ("gemma-2-2b-it", {"final_logit_softcapping": None}, "final_logit_softcapping"),
    ("gemma-2-2b-it", {"query_pre_attn_scalar": 224}, "query_pre_attn_scalar"),
    ("gemma-2-2b-it", {"sliding_window": 2048}, "sliding_window"),
    ("gemma3-1b-it", {"rope_local_base_freq": 20000.0}, "rope_local_base_freq"),
    ("gemma3-1b-it", {"sliding_window": 1024}, "sliding_window"),
    ("Phi-3.5-mini-instruct", {"rms_norm_eps": 1e-6}, "norm_eps"),
    ("Phi-3.5-mini-instruct", {"rope_theta": 20000.0}, "rope_theta"),
    ("Phi-4-mini-instruct", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ("Qwen3-0.6B", {"rms_norm_eps": 1e-5}, "norm_eps"),
])
def test_a_new_architecture_compiled_in_difference_finds_no_library(base, change, field):
    from personalize.arch import get_architecture

    cfg = hf_config(base, **change)
    mc = get_architecture(cfg["model_type"]).library_config(cfg).model_config
    assert find_libraries(cfg["model_type"], mc, "q4f16_1") == []
    reason = why_no_library(cfg["model_type"], mc, "q4f16_1")
    assert f"it has the shapes of {base}" in reason and field in reason, reason


def test_phi35_without_longrope_is_phi3_mini_4k():
    """Phi-3.5-mini and Phi-3-mini-4k share every shape; LongRoPE is what tells their libraries apart
    (the context length is a runtime value, not compiled in)."""
    from personalize.arch import get_architecture

    for scaling, base in (("keep", "Phi-3.5-mini-instruct"), (None, "Phi-3-mini-4k-instruct")):
        changes = {} if scaling == "keep" else {"rope_scaling": None}
        mc = get_architecture("phi3").library_config(hf_config("Phi-3.5-mini-instruct", **changes)).model_config
        assert {x.base_model for x in find_libraries("phi3", mc, "q4f16_1")} == {base}


def test_phi3_libraries_compile_no_sliding_window():
    """Phi-3's config.json names a sliding window (2047, 262144) that MLC's phi3 model ignores: its
    library's metadata says -1, and so the catalog records none."""
    meta = json.loads((DATA / "metadata" / "Phi-3.5-mini-instruct-q4f32_1-ctx4k_cs1k-webgpu.json").read_text())
    assert meta["sliding_window_size"] == -1
    assert {lib.config["sliding_window"] for lib in libraries() if lib.model_type == "phi3"} == {None}


@pytest.mark.parametrize("base", sorted({lib.base_model for lib in libraries()}))
def test_the_architecture_definition_and_the_leaf_catalog_agree(base):
    """`add` compares through the architecture definition (prebuilt.catalog_view: tying from the layout's
    head); `share`, a leaf, reads the artifact's model_config alone. Both must see the same values, and
    the catalog's symbolic-vocab flag must be the architecture's."""
    from personalize.arch import ARCHITECTURES
    from personalize.prebuilt import catalog_view

    lib = next(x for x in libraries() if x.base_model == base)
    assert lib.model_type in ARCHITECTURES  # every catalogued architecture is one personalize converts
    model_type, mc = library_config(base)
    assert normalize_config(model_type, mc) == normalize_config(model_type, catalog_view(model_type, mc))
    config = ARCHITECTURES[model_type].library_config(hf_config(base))
    assert lib.symbolic_vocab == config.symbolic_vocab
