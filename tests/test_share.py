"""`personalize share`: the records each MLC runtime takes, and the VRAM estimate behind them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from catalog import directory_for_webllm, find_by_file, libraries
from publish import hub as hubmod
from registry import store
from publish.share import (ShareError, estimate_vram, parameter_bytes, share_records, system_lib_name,
                            webgpu_wasm_name)
from tests.conftest import run_cli
from tests.hub_stub import make_fake_artifact
from tests.shaped_models import hf_config, write_paper_artifact

LIB_KEY = "0123456789abcdef"  # what make_fake_artifact records


# ----------------------------------------------------------------------------- schema checks
CATALOG_URLS = {lib.url for lib in libraries()}


def check_model_record(rec: dict) -> None:
    """WebLLM's ModelRecord (src/config.ts): required model, model_id, model_lib; typed optionals.
    model_lib is always one of MLC's prebuilt libraries (the catalog), never a made-up name."""
    assert isinstance(rec["model"], str) and rec["model"].startswith("http")
    assert isinstance(rec["model_id"], str) and rec["model_id"]
    assert rec["model_lib"] in CATALOG_URLS
    assert isinstance(rec["vram_required_MB"], (int, float)) and rec["vram_required_MB"] > 0
    assert isinstance(rec["low_resource_required"], bool)
    assert all(isinstance(f, str) for f in rec.get("required_features", []))
    # WebLLM takes the prefill chunk from the library; the context is the one MLC runs the library with
    assert set(rec["overrides"]) == {"context_window_size"} and isinstance(rec["overrides"]["context_window_size"], int)
    allowed = {"model", "model_id", "model_lib", "overrides", "vram_required_MB", "low_resource_required",
               "buffer_size_required_bytes", "required_features", "model_type", "integrity"}
    assert set(rec) <= allowed


def check_package_entry(entry: dict) -> None:
    """mlc-package-config.json model_list entry (mlc_llm/interface/package.py)."""
    assert isinstance(entry["model"], str) and isinstance(entry["model_id"], str)
    assert isinstance(entry["estimated_vram_bytes"], int) and entry["estimated_vram_bytes"] > 0
    assert isinstance(entry["bundle_weight"], bool)
    if not entry["model"].startswith("HF://"):
        assert entry["bundle_weight"] is True  # package.py requires bundling for local paths
    assert isinstance(entry["model_lib"], str) and "-" not in entry["model_lib"]  # a C symbol prefix
    allowed_overrides = {"context_window_size", "sliding_window_size", "prefill_chunk_size", "attention_sink_size",
                         "max_batch_size", "tensor_parallel_shards", "pipeline_parallel_stages", "opt"}
    assert set(entry.get("overrides", {})) <= allowed_overrides
    assert set(entry) <= {"model", "model_id", "estimated_vram_bytes", "bundle_weight", "overrides", "model_lib"}


def check_share_doc(doc: dict) -> None:
    rec = doc["webllm"]["model_record"]
    if rec is None:
        assert doc["webllm"]["app_config"] is None and doc["webllm"]["reason"].startswith("no ")
    else:
        check_model_record(rec)
        assert doc["webllm"]["app_config"]["model_list"] == [rec]
        assert math.isclose(rec["vram_required_MB"], doc["vram"]["total"] / 2**20, abs_tol=0.01)
    for device in ("iphone", "android"):
        cfg = doc["mlc_package_config"][device]
        assert cfg["device"] == device and len(cfg["model_list"]) == 1
        check_package_entry(cfg["model_list"][0])
    assert doc["mlc_llm"]["argv"][:2] == ["mlc_llm", "chat"]
    assert doc["mlc_llm"]["command"].startswith("mlc_llm chat ")
    v = doc["vram"]
    assert v["total"] == v["parameters"] + v["kv_cache"] + v["activations"]
    assert doc["mlc_package_config"]["iphone"]["model_list"][0]["estimated_vram_bytes"] == v["total"]


# ----------------------------------------------------------------------------- VRAM
def smollm2_tensor_cache() -> dict:
    """tensor-cache.json records with SmolLM2-135M's library parameter shapes (q0f16, tied embeddings)."""
    h, i, layers, v, q, kv = 576, 1536, 30, 49152, 9 * 64, 3 * 64
    recs = [("model.embed_tokens.weight", [v, h])]
    for n in range(layers):
        recs += [(f"model.layers.{n}.self_attn.qkv_proj.weight", [q + 2 * kv, h]),
                 (f"model.layers.{n}.self_attn.o_proj.weight", [h, q]),
                 (f"model.layers.{n}.mlp.gate_up_proj.weight", [2 * i, h]),
                 (f"model.layers.{n}.mlp.down_proj.weight", [h, i]),
                 (f"model.layers.{n}.input_layernorm.weight", [h]),
                 (f"model.layers.{n}.post_attention_layernorm.weight", [h])]
    recs.append(("model.norm.weight", [h]))
    return {"records": [{"dataPath": "params_shard_0.bin", "records": [
        {"name": n, "shape": s, "dtype": "float16", "format": "f32-to-bf16", "nbytes": 2 * math.prod(s)}
        for n, s in recs]}]}


SMOLLM2_CHAT = {"model_type": "llama", "quantization": "q0f16", "vocab_size": 49152, "context_window_size": 4096,
                "sliding_window_size": -1, "prefill_chunk_size": 1024,
                "model_config": {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                                 "num_key_value_heads": 3, "num_hidden_layers": 30, "head_dim": 64,
                                 "vocab_size": 49152}}


def test_vram_estimate_for_smollm2_matches_the_formula_and_webllm():
    est = estimate_vram(SMOLLM2_CHAT, smollm2_tensor_cache())
    assert est.parameters == 2 * 134_515_008  # SmolLM2-135M's parameter count, fp16
    assert est.kv_cache == 30 * 2 * 3 * 64 * 4096 * 2
    assert est.activations == 1024 * (3 * 576 + 2 * 1536) * 2 + 49152 * 4
    # WebLLM publishes vram_required_MB = 359.69 for its q0f16 ctx4k build of this model.
    assert abs(est.total_mib - 359.69) / 359.69 < 0.02


def test_vram_counts_f32_to_bf16_records_at_their_decoded_size():
    cache = {"records": [{"records": [{"name": "w", "shape": [10, 4], "dtype": "float32", "format": "f32-to-bf16",
                                       "nbytes": 80},
                                      {"name": "q", "shape": [10, 2], "dtype": "uint32", "format": "f32-to-bf16",
                                       "nbytes": 80}]}]}
    assert parameter_bytes(cache) == 10 * 4 * 4 + 10 * 2 * 4


def test_vram_uses_kv_dtype_of_the_quantization_and_sliding_window():
    chat = json.loads(json.dumps(SMOLLM2_CHAT))
    chat.update(quantization="q4f32_1", context_window_size=-1, sliding_window_size=1024)
    est = estimate_vram(chat, smollm2_tensor_cache())
    assert est.model_dtype == "float32" and est.context_window_size == 1024
    assert est.kv_cache == 30 * 2 * 3 * 64 * 1024 * 4


def test_names_follow_mlc_conventions():
    assert system_lib_name("qwen2", "q4f16_1", "ab-cd") == "qwen2_q4f16_1_ab_cd"
    assert webgpu_wasm_name("SmolLM2-135M-Instruct", "q0f16", 1024) == "SmolLM2-135M-Instruct-q0f16_cs1k-webgpu.wasm"
    assert webgpu_wasm_name("M", "q4f16_1", 500) == "M-q4f16_1_cs500-webgpu.wasm"


# ----------------------------------------------------------------------------- records
def test_hub_records_without_a_prebuilt_library(tmp_path):
    """A tiny model fits none of MLC's libraries: no WebLLM record, and the reason instead of a made-up name."""
    art = make_fake_artifact(tmp_path / "tiny", name="tiny")
    doc = share_records(art, name="tiny", repo_id="alice/tiny-MLC")
    check_share_doc(doc)
    assert doc["webllm"]["model_record"] is None
    assert doc["webllm"]["reason"].startswith("no MLC prebuilt WebGPU library for llama with hidden 64")
    assert any(n.startswith("WebLLM: no MLC prebuilt") for n in doc["notes"])
    entry = doc["mlc_package_config"]["iphone"]["model_list"][0]
    assert entry == {"model": "HF://alice/tiny-MLC", "model_id": "tiny-MLC",
                     "estimated_vram_bytes": doc["vram"]["total"], "model_lib": f"llama_q0f16_{LIB_KEY}",
                     "bundle_weight": False, "overrides": {"context_window_size": 512, "prefill_chunk_size": 128}}
    assert doc["mlc_llm"]["argv"] == ["mlc_llm", "chat", "HF://alice/tiny-MLC"]  # MLC's runtime finds its library
    assert any("compiles (or finds in its cache)" in n for n in doc["notes"])


def test_branch_and_other_endpoint(tmp_path):
    art = write_paper_artifact(tmp_path / "qwen", hf_config("Qwen2-0.5B-Instruct"), "q4f32_1")
    doc = share_records(art, name="qwen", repo_id="alice/t", revision="dev", endpoint="http://mirror.local")
    check_share_doc(doc)
    rec = doc["webllm"]["model_record"]
    assert rec["model"] == "http://mirror.local/alice/t/resolve/dev/"  # WebLLM keeps an explicit /resolve/<rev>/
    assert "required_features" not in rec  # f32 needs no shader-f16
    assert any("main branch" in n for n in doc["notes"]) and any("mirror.local" in n for n in doc["notes"])


def test_local_urls_are_pinned_to_the_artifact_content(tmp_path):
    """`share --local` names /local/<name>/resolve/<X-Repo-Commit>/: a re-added artifact gets a new URL, so
    WebLLM (which caches by URL and never revalidates) cannot serve the old files."""
    import hashlib

    art = make_fake_artifact(tmp_path / "tiny", name="tiny")
    doc = share_records(art, name="tiny", local_url="http://127.0.0.1:9999")
    check_share_doc(doc)
    rev = hashlib.sha1((art / "personalize.json").read_bytes()).hexdigest()  # what serve sends as X-Repo-Commit
    assert doc["model_url"] == f"http://127.0.0.1:9999/local/tiny/resolve/{rev}/" and doc["revision"] == rev
    entry = doc["mlc_package_config"]["android"]["model_list"][0]
    assert entry["model"] == str(art) and entry["bundle_weight"] is True
    assert doc["mlc_llm"]["argv"] == ["mlc_llm", "chat", str(art)]
    lineage = json.loads((art / "personalize.json").read_text())
    (art / "personalize.json").write_text(json.dumps(dict(lineage, created="2026-02-02T00:00:00+00:00")))
    assert share_records(art, name="tiny", local_url="http://127.0.0.1:9999")["revision"] != rev


def test_model_lib_the_user_passes(tmp_path):
    """--model-lib: an MLC library (checked to be one, of this model_type and quantization) for mlc_llm and
    the apps; a static .tar also gives `mlc_llm package` its system-lib prefix and path."""
    import io
    import tarfile

    art = make_fake_artifact(tmp_path / "tiny", name="tiny")
    meta = {"model_type": "llama", "quantization": "q0f16", "context_window_size": 512, "prefill_chunk_size": 128,
            "params": []}
    blob = b"\x00_mytiny_q0f16___tvm_ffi__library_bin\x00" + json.dumps(meta).encode() + b"\x00"
    tar = tmp_path / "mytiny.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("lib0.o")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    doc = share_records(art, name="tiny", repo_id="alice/tiny", model_lib=str(tar))
    check_share_doc(doc)
    assert doc["mlc_llm"]["argv"] == ["mlc_llm", "chat", "HF://alice/tiny", "--model-lib", str(tar)]
    android = doc["mlc_package_config"]["android"]
    assert android["model_list"][0]["model_lib"] == "mytiny_q0f16"
    assert android["model_lib_path_for_prepare_libs"] == {"mytiny_q0f16": str(tar)}
    wasm = Path(__file__).parent / "data" / "prebuilt" / "v0_2_48" / "Qwen2-0.5B-Instruct-q0f32-ctx4k_cs1k-webgpu.wasm"
    with pytest.raises(ShareError, match="qwen2 q0f32 library"):
        share_records(art, name="tiny", repo_id="alice/tiny", model_lib=str(wasm))


def test_not_pushed_and_no_repo_is_an_error(tmp_path):
    art = make_fake_artifact(tmp_path / "tiny")
    with pytest.raises(ShareError, match="has not been pushed") as info:
        share_records(art, name="tiny")
    assert "personalize push" in info.value.hint


# ----------------------------------------------------------------------------- done-when: MLC's libraries
@pytest.mark.parametrize("base,quant", [("Qwen2-0.5B-Instruct", "q4f32_1"), ("Llama-3.2-1B-Instruct", "q4f16_1"),
                                        ("SmolLM2-135M-Instruct", "q0f16")])
def test_share_names_mlcs_library_with_its_context_and_vram(home, base, quant):
    """A fine-tune of each base: share --json names MLC's prebuilt library from the catalog, overrides the
    context to the one MLC runs it with (4096), and estimates VRAM within 10% of MLC's own number."""
    name = f"ft-{quant}"
    write_paper_artifact(home / "artifacts" / name, hf_config(base), quant)
    code, out, err = run_cli("share", name, "--repo", "me/ft", "--json")
    assert code == 0, err
    doc = json.loads(out)
    check_share_doc(doc)
    rec = doc["webllm"]["model_record"]
    (lib,) = [x for x in find_by_file(rec["model_lib"]) if x.url == rec["model_lib"]]
    assert lib.base_model == base and lib.quantization == quant and lib.directory == "v0_2_86/base"
    assert rec["overrides"] == {"context_window_size": 4096}
    assert abs(rec["vram_required_MB"] / lib.vram_required_MB - 1) < 0.10, (rec["vram_required_MB"], lib.vram_required_MB)
    assert doc["webllm"]["webllm_versions"] == ">=0.2.86 <=0.2.86"
    assert ("shader-f16" in rec.get("required_features", [])) == quant.endswith(("f16", "f16_1"))
    code, out, _ = run_cli("share", name, "--repo", "me/ft", "--json", "--webllm-version", "0.2.79")
    old = json.loads(out)["webllm"]["model_record"]["model_lib"]
    assert "/web-llm-models/v0_2_48/" in old and directory_for_webllm("0.2.79") == "v0_2_48"


def test_share_of_the_real_smollm2(home, smollm2_dir):
    """The real SmolLM2-135M-Instruct (transformers 5 config: rope_parameters, eps stored as float32) added
    by `personalize add`: its own config finds MLC's q0f16 library; the VRAM estimate is within 10%."""
    code, out, err = run_cli("add", str(smollm2_dir), "-q", "q0f16", "--no-eval", "--name", "smol", "--json")
    assert code == 0, err
    assert json.loads(out)["prebuilt_library"]["base_model"] == "SmolLM2-135M-Instruct"
    code, out, err = run_cli("share", "smol", "--repo", "me/smol-q0f16-MLC", "--json")
    assert code == 0, err
    doc = json.loads(out)
    check_share_doc(doc)
    rec = doc["webllm"]["model_record"]
    assert rec["model_lib"].endswith("/v0_2_86/base/SmolLM2-135M-Instruct-q0f16_cs1k-webgpu.wasm")
    assert rec["overrides"] == {"context_window_size": 4096} and rec["required_features"] == ["shader-f16"]
    (lib,) = [x for x in libraries() if x.url == rec["model_lib"]]
    assert abs(rec["vram_required_MB"] / lib.vram_required_MB - 1) < 0.10


def test_smollm2_135m_q4_has_no_webllm_library(home):
    write_paper_artifact(home / "artifacts" / "smol-q4", hf_config("SmolLM2-135M-Instruct"), "q4f16_1")
    code, out, err = run_cli("share", "smol-q4", "--repo", "me/smol", "--json")
    assert code == 0, err
    doc = json.loads(out)
    check_share_doc(doc)
    assert doc["webllm"]["model_record"] is None
    assert "--quantization q0f16" in doc["webllm"]["reason"]
    code, out, _ = run_cli("share", "smol-q4", "--repo", "me/smol")
    assert code == 0 and "# none: no MLC prebuilt WebGPU library for SmolLM2-135M-Instruct in q4f16_1" in out


# ----------------------------------------------------------------------------- CLI
def test_cli_share_uses_the_recorded_push(home):
    make_fake_artifact(home / "artifacts" / "tiny", name="tiny")
    code, out, err = run_cli("share", "tiny", "--json")
    assert code == 2 and "has not been pushed" in err
    result = hubmod.PushResult(repo_id="acme/tiny-MLC", revision="main", endpoint="https://huggingface.co",
                               commit="a" * 40, head="a" * 40, uploaded=[], unchanged=[], deleted=[], files=[])
    store.record_push(home, "tiny", result.record())
    code, out, err = run_cli("share", "tiny", "--json")
    assert code == 0, err
    doc = json.loads(out)
    check_share_doc(doc)
    assert doc["repo_id"] == "acme/tiny-MLC" and doc["mlc_llm"]["model"] == "HF://acme/tiny-MLC"
    code, out, _ = run_cli("share", "tiny", "--repo", "bob/other", "--json")
    assert code == 0 and json.loads(out)["repo_id"] == "bob/other"
    code, out, _ = run_cli("share", "tiny", "--local", "--port", "8800", "--json")
    assert code == 0 and json.loads(out)["model_url"].startswith("http://127.0.0.1:8800/local/tiny/resolve/")
    code, out, _ = run_cli("share", "tiny")
    assert code == 0 and "mlc_llm chat HF://acme/tiny-MLC" in out and '"model_id": "tiny-MLC"' in out
    code, _, err = run_cli("share", "tiny", "--repo", "no-slash")
    assert code == 2 and "invalid Hub repo id" in err
