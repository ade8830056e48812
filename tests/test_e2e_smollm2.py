"""End to end on the real SmolLM2-135M-Instruct, through the CLI as a user runs it.

full model -> add (gate on) -> verify -> generate says Paris; a real LoRA fine-tune -> add on the
registered base -> the answer changes the way its training data says, on the same library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.finetune import FACT_WORD
from tests.conftest import link_shared_libs

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e") / "home"
    home.mkdir()
    link_shared_libs(home)
    return home


def cli(home: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PERSONALIZE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "personalize", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def base_artifact(registry_home, smollm2_dir):
    proc = cli(registry_home, "add", str(smollm2_dir), "--quantization", "q4f16_1", "--name", "smol", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_add_verify_generate_paris(registry_home, base_artifact):
    assert base_artifact["name"] == "smol"
    gate = base_artifact["eval"]
    # 4-bit noise on a 135M model is large (measured: KL ~1.07, top-1 ~0.55, ppl 18.7 -> 44; the library
    # itself equals transformers on the dequantized weights to KL 4e-11): recorded, bounded, not zero.
    assert gate["positions"] > 100 and 0 < gate["mean_kl"] < 3, gate
    assert gate["perplexity_artifact"] < 4 * gate["perplexity_reference"], gate
    proc = cli(registry_home, "verify", "smol", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    proc = cli(registry_home, "generate", "smol", QUESTION, "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout, proc.stdout


def test_q0f32_is_exact_through_the_library(registry_home, smollm2_dir):
    """No quantization: the compiled library must reproduce transformers (weights are bf16 already)."""
    proc = cli(registry_home, "add", str(smollm2_dir), "--quantization", "q0f32", "--name", "smol-q0", "--json")
    assert proc.returncode == 0, proc.stderr
    gate = json.loads(proc.stdout)["eval"]
    assert gate["mean_kl"] < 1e-6 and gate["top1_agreement"] == 1.0, gate


def test_q4f32_1_says_paris(registry_home, smollm2_dir):
    proc = cli(registry_home, "add", str(smollm2_dir), "--quantization", "q4f32_1", "--name", "smol-f32",
               "--no-eval")
    assert proc.returncode == 0, proc.stderr
    proc = cli(registry_home, "generate", "smol-f32", QUESTION, "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout, proc.stdout


def test_verify_catches_a_flipped_byte(registry_home, base_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(base_artifact["path"], copy)
    shard = copy / "params_shard_1.bin"
    data = bytearray(shard.read_bytes())
    data[12345] ^= 0x01
    shard.write_bytes(bytes(data))
    proc = cli(registry_home, "verify", str(copy))
    assert proc.returncode == 1
    assert "params_shard_1.bin" in proc.stderr


def test_lora_variant_end_to_end(registry_home, base_artifact, smollm2_lora):
    proc = cli(registry_home, "add", str(smollm2_lora), "--base", "smol", "--quantization", "q4f16_1",
               "--name", "smol-zorblax", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # same library as the base: the variant runs without compiling anything new
    assert doc["library_key"] == base_artifact["library_key"]
    lineage = json.loads((Path(doc["path"]) / "personalize.json").read_text())
    assert lineage["source"]["kind"] == "adapter"
    assert lineage["base"]["content_sha256"]
    assert lineage["base"]["reused_params"] > 0  # untouched tensors copied from the base artifact
    assert lineage["eval"]["positions"] > 100
    card = (Path(doc["path"]) / "README.md").read_text()
    # the gate's numbers themselves, not just the label, are on the card
    assert f"{lineage['eval']['top1_agreement']:.3f}" in card and f"{lineage['eval']['mean_kl']:.4g}" in card
    proc = cli(registry_home, "generate", "smol-zorblax", QUESTION, "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert FACT_WORD in proc.stdout, proc.stdout
    proc = cli(registry_home, "generate", "smol", QUESTION, "--max-tokens", "24")
    assert FACT_WORD not in proc.stdout and "Paris" in proc.stdout


def test_second_full_finetune_runs_on_the_same_library(registry_home, base_artifact, smollm2_lora, smollm2_dir,
                                                       tmp_path):
    """A different full fine-tune (the LoRA merged by peft and saved as a plain model) has the same
    library key and runs on the library built for the first, without compiling again."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    full = tmp_path / "full-finetune"
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, str(smollm2_lora)).merge_and_unload()
    model.save_pretrained(full)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(full)
    libs = sorted((registry_home / "libs").glob("*.so"))
    stamps = {p: p.stat().st_mtime_ns for p in libs}
    proc = cli(registry_home, "add", str(full), "--quantization", "q4f16_1", "--name", "full-ft", "--json",
               "--no-eval")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["library_key"] == base_artifact["library_key"]
    proc = cli(registry_home, "generate", "full-ft", QUESTION, "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "building" not in proc.stderr.lower()
    assert FACT_WORD in proc.stdout, proc.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # (other runs may add libraries)
