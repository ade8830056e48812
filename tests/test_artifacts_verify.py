"""verify_artifact finds every kind of damage and names the file; lineage and model card round-trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from tests.test_artifacts_fixtures import make_model_dir

from artifacts import Artifact
from artifacts.chat_config import build_chat_config, write_chat_config
from artifacts.lineage import hash_file, read_lineage, write_lineage
from artifacts.model_card import hub_id, render_model_card
from artifacts.tensor_cache import TensorCacheWriter, param_stats
from artifacts.verify import verify_artifact

CAP = 4096


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("src"), "mistral")


def make_artifact(root: Path, model_dir: Path, *, eval_section: bool = True) -> tuple[Path, dict, dict]:
    out = root / "art"
    rng = np.random.default_rng(0)
    writer = TensorCacheWriter(out, shard_cap_bytes=CAP)
    for i in range(8):
        writer.add(f"model.layers.{i}.q_weight", rng.integers(0, 2**32 - 1, (8, 40), dtype=np.uint32))
        writer.add(f"model.layers.{i}.q_scale", rng.standard_normal((8, 10)).astype(np.float16))
        writer.add(f"model.layers.{i}.norm.weight", rng.standard_normal(64).astype(np.float32))
        writer.add(f"model.layers.{i}.bias", rng.standard_normal(64).astype(ml_dtypes.bfloat16))
    writer.finish(param_stats(writer.param_count, writer.param_bytes, 10_000))
    chat, files = build_chat_config(model_type="mistral", quantization="q4f16_1", source_dir=model_dir,
                                    model_config={"vocab_size": 20, "context_window_size": 512,
                                                  "prefill_chunk_size": 512, "tensor_parallel_shards": 1,
                                                  "hidden_size": 64, "intermediate_size": 128,
                                                  "num_attention_heads": 4, "num_key_value_heads": 2,
                                                  "num_hidden_layers": 8})
    write_chat_config(out, chat)
    for f in files:
        shutil.copyfile(f, out / f.name)
    lineage = {"format": "personalize-artifact/1", "name": "tiny-mistral-q4f16_1",
               "source": {"kind": "adapter", "path": "/x/adapter", "hub": "someone/tiny-lora"},
               "base": {"spec": "hf://mistralai/Mistral-7B-Instruct-v0.2@abc123", "revision": "abc123"},
               "adapter": {"peft_type": "LORA", "config": {"r": 8, "lora_alpha": 16}},
               "model_type": "mistral", "quantization": "q4f16_1", "library_key": "0123456789abcdef",
               "license": "apache-2.0", "tools": {"personalize": "0.1.0"}}
    if eval_section:
        lineage["eval"] = {"mean_kl": 0.0012, "top1_agreement": 0.987, "perplexity_reference": 5.1,
                           "perplexity_artifact": 5.2, "positions": 300}
    (out / "README.md").write_text(Artifact(out).render_card("me/tiny-mistral-MLC", lineage=lineage))
    write_lineage(out, lineage, known_sha256=writer.file_hashes)
    return out, lineage, chat


def paths(problems):
    return {p.path for p in problems}


def test_intact_artifact_has_no_problems(tmp_path, model_dir):
    out, lineage, _ = make_artifact(tmp_path, model_dir)
    assert verify_artifact(out) == []
    doc = read_lineage(out)
    assert set(doc["files"]) == {p.name for p in out.iterdir()} - {"personalize.json"}
    assert doc["files"]["params_shard_0.bin"]["sha256"] == hash_file(out / "params_shard_0.bin")
    assert (out / "personalize.json").read_text().endswith("}\n")


def corrupt_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_changed_shard_byte(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    corrupt_byte(out / "params_shard_1.bin")
    probs = verify_artifact(out)
    assert paths(probs) == {"params_shard_1.bin"}
    assert any("sha256" in p.message for p in probs) and any("md5" in p.message for p in probs)


def test_truncated_shard(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    data = (out / "params_shard_0.bin").read_bytes()
    (out / "params_shard_0.bin").write_bytes(data[:-3])
    probs = verify_artifact(out)
    assert "params_shard_0.bin" in paths(probs)
    assert any("size" in p.message and "nbytes" in p.message for p in probs)


def test_missing_and_extra_files(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    (out / "params_shard_2.bin").unlink()
    (out / "stray.txt").write_text("hi")
    probs = verify_artifact(out)
    assert {"params_shard_2.bin", "stray.txt"} <= paths(probs)
    assert any(p.path == "params_shard_2.bin" and "missing" in p.message for p in probs)
    assert any(p.path == "stray.txt" and "not listed" in p.message for p in probs)


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc, indent=4))


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d["records"][0]["records"][1].__setitem__("byteOffset", 10**6), "outside"),
    (lambda d: d["records"][0]["records"][0].__setitem__("nbytes", 7), "needs"),
    (lambda d: d["records"][0]["records"][2].__setitem__("shape", [128]), "needs"),
    (lambda d: d["records"][0].__setitem__("md5sum", "0" * 32), "md5"),
    (lambda d: d["records"][1]["records"].append(dict(d["records"][0]["records"][0])), "twice"),
])  # fmt: skip
def test_tensor_cache_inconsistencies(tmp_path, model_dir, damage, needle):
    out, *_ = make_artifact(tmp_path, model_dir)
    edit_json(out / "tensor-cache.json", damage)
    probs = verify_artifact(out)
    # the json no longer matches personalize.json, nor ndarray-cache.json, and the record check fires
    assert {"tensor-cache.json", "ndarray-cache.json"} <= paths(probs)
    assert any(p.path == "tensor-cache.json" and needle in p.message for p in probs), probs


def test_float32_record_is_counted_half_size(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    doc = json.loads((out / "tensor-cache.json").read_text())
    rec = next(r for s in doc["records"] for r in s["records"] if r["dtype"] == "float32")
    assert rec["nbytes"] == 64 * 2 and rec["format"] == "f32-to-bf16"


def test_ndarray_cache_must_equal_tensor_cache(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    (out / "ndarray-cache.json").write_text((out / "ndarray-cache.json").read_text() + " ")
    probs = verify_artifact(out)
    assert any(p.path == "ndarray-cache.json" and "identical" in p.message for p in probs)


def test_chat_config_must_parse(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    (out / "mlc-chat-config.json").write_text("{not json")
    probs = verify_artifact(out)
    assert any(p.path == "mlc-chat-config.json" and "JSON" in p.message for p in probs)


def test_tokenizer_file_listed_but_missing(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    (out / "tokenizer.json").unlink()
    probs = verify_artifact(out)
    assert any(p.path == "tokenizer.json" and "tokenizer_files" in p.message for p in probs)


def test_lineage_missing_or_broken(tmp_path, model_dir):
    out, *_ = make_artifact(tmp_path, model_dir)
    (out / "personalize.json").write_text("[]")
    assert paths(verify_artifact(out)) == {"personalize.json"}
    (out / "personalize.json").unlink()
    assert paths(verify_artifact(out)) == {"personalize.json"}
    assert verify_artifact(out, require_lineage=False) == []


def test_model_card_front_matter(tmp_path, model_dir):
    out, lineage, chat = make_artifact(tmp_path, model_dir)
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert meta["base_model_relation"] == "finetune"
    assert meta["library_name"] == "mlc-llm" and meta["pipeline_tag"] == "text-generation"
    assert {"mlc-llm", "web-llm", "q4f16_1", "mistral"} <= set(meta["tags"])
    assert meta["license"] == "apache-2.0"
    card = ModelCard(text)
    assert card.data.base_model == "mistralai/Mistral-7B-Instruct-v0.2"
    body = card.text
    for needle in ("0123456789abcdef", "mlc_llm chat HF://me/tiny-mistral-MLC", "0.987", "someone/tiny-lora"):
        assert needle in body, needle
    # A tiny model fits no prebuilt WebGPU library: the card says so instead of naming one.
    assert "CreateMLCEngine" not in body and "mlc_llm compile" in body and ".wasm" not in body
    # the app entry carries the number, not the placeholder: weights (from the shards) + KV cache
    entry = json.loads(body.split("```json\n")[1].split("```")[0])
    weights = sum(int(np.prod(r["shape"])) * np.dtype(r["dtype"] if r["dtype"] != "bfloat16" else "uint16").itemsize
                  for s in json.loads((out / "tensor-cache.json").read_text())["records"] for r in s["records"])
    kv = 8 * 2 * 2 * 16 * 512 * 2  # layers * (K, V) * kv_heads * head_dim * context * fp16
    assert isinstance(entry["estimated_vram_bytes"], int) and entry["estimated_vram_bytes"] > weights + kv


def test_model_card_without_hub_base_or_eval(tmp_path, model_dir):
    lineage = {"name": "local-q0f16", "source": {"kind": "model", "path": "/data/ft"},
               "quantization": "q0f16", "model_type": "llama", "library_key": "k"}
    text = render_model_card(lineage, {"quantization": "q0f16", "model_type": "llama"}, repo_id=None,
                             artifact_dir=tmp_path)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert "base_model" not in meta and "license" not in meta
    assert "Equivalence" not in text and "mlc_llm chat ./local-q0f16" in text
    lineage["source"]["hub"] = "org/ft-model"
    meta = yaml.safe_load(render_model_card(lineage, {}, repo_id=None, artifact_dir=tmp_path).split("---\n")[1])
    assert meta["base_model"] == "org/ft-model" and meta["base_model_relation"] == "quantized"


def test_hub_id_parsing():
    assert hub_id("hf://a/b@rev") == "a/b"
    assert hub_id("https://huggingface.co/a/b/tree/main") == "a/b"
    assert hub_id("./local/dir") is None and hub_id("/abs/path") is None and hub_id(None) is None


def test_model_card_size_before_files_map(tmp_path):
    (tmp_path / "params_shard_0.bin").write_bytes(b"x" * 3000)
    lineage = {"source": {"kind": "model", "path": "/data/My Finetune"}, "quantization": "q4f16_1",
               "model_type": "llama", "library_key": "k"}
    text = render_model_card(lineage, {}, repo_id=None, artifact_dir=tmp_path)
    assert "Size on disk: 2.9 KB" in text
    # without tensor-cache.json there is nothing to estimate device memory from: no made-up number
    assert '"estimated_vram_bytes": "<bytes: weights + KV cache>"' in text
    assert "mlc_llm chat ./My-Finetune-q4f16_1\n" in text  # a usable default name, no spaces
    assert "not recorded" in render_model_card(lineage, {}, repo_id=None, artifact_dir=tmp_path / "gone")


def test_model_card_uses_the_share_estimate_and_library_name(tmp_path):
    """The card's app entry carries the same VRAM and model_lib that `personalize share` prints."""
    from artifacts.deploy import estimate_vram, system_lib_name

    chat = {"quantization": "q4f16_1", "model_type": "llama", "context_window_size": 1024,
            "prefill_chunk_size": 256, "vocab_size": 320,
            "model_config": {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
                             "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 320}}
    cache = {"records": [{"records": [{"name": "w", "shape": [320, 8], "dtype": "uint32"}]}]}
    (tmp_path / "tensor-cache.json").write_text(json.dumps(cache))
    lineage = {"source": {"kind": "model", "path": "/data/m"}, "quantization": "q4f16_1",
               "model_type": "llama", "library_key": "abc"}
    text = render_model_card(lineage, chat, repo_id="org/m", artifact_dir=tmp_path)
    assert f'"estimated_vram_bytes": {estimate_vram(chat, cache).total}' in text
    assert f'"model_lib": "{system_lib_name("llama", "q4f16_1", "abc")}"' in text
