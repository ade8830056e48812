"""The benchmark's own machinery: the measurement harness and the synthetic model writer."""

from __future__ import annotations

from personalize.smollm2 import ensure_smollm2

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _measure import CommandFailed, run_measured, warm_page_cache  # noqa: E402
from _synthetic_model import llama_tensor_shapes, padded_tokenizer_json, write_random_safetensors  # noqa: E402

SMOLLM2 = ensure_smollm2()  # built once by scripts/test.sh, cached


def test_peak_rss_sees_a_child_allocation(tmp_path):
    # 300 MB touched by the child: the kernel high-water mark must see it, wherever it lands.
    code = "import numpy as np, time; a = np.ones(300_000_000 // 8); time.sleep(1.0); print(a.sum())"
    m = run_measured("alloc", [sys.executable, "-c", code], log_path=tmp_path / "log", sync_first=False)
    assert m.ok and m.wall_s > 1.0
    assert m.peak_rss_bytes > 300e6
    assert m.peak_anon_bytes > 250e6  # sampled, so allow for a missed last sample's slack
    small = run_measured("small", [sys.executable, "-c", "pass"], sync_first=False)
    assert small.peak_rss_bytes < m.peak_rss_bytes - 250e6


def test_a_large_parent_does_not_inflate_the_child(tmp_path):
    # Linux starts a forked child's ru_maxrss at the parent's RSS; the launcher keeps that out.
    ballast = np.ones(400_000_000 // 8)
    small = run_measured("small", [sys.executable, "-c", "pass"], sync_first=False)
    assert small.peak_rss_bytes < 150e6, small
    assert ballast.sum() > 0


def test_failed_command_raises_with_log_tail(tmp_path):
    with pytest.raises(CommandFailed) as info:
        run_measured("boom", [sys.executable, "-c", "import sys; print('the reason'); sys.exit(3)"],
                     log_path=tmp_path / "log", sync_first=False)
    assert info.value.measurement.returncode == 3
    assert "the reason" in str(info.value)


def test_streamed_safetensors_reads_back(tmp_path):
    cfg = {"hidden_size": 64, "intermediate_size": 128, "vocab_size": 300, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 2, "tie_word_embeddings": False}
    shapes = llama_tensor_shapes(cfg)
    path = tmp_path / "model.safetensors"
    nbytes = write_random_safetensors(path, shapes, rows_per_chunk=7)  # chunking must not change layout
    tensors = load_file(path)
    assert set(tensors) == {n for n, _ in shapes}
    assert sum(t.nbytes for t in tensors.values()) == nbytes
    for name, shape in shapes:
        assert tensors[name].shape == shape
    w = tensors["model.layers.1.mlp.down_proj.weight"].astype(np.float32)
    assert 0.015 < w.std() < 0.025
    assert np.all(tensors["model.norm.weight"].astype(np.float32) == 1)
    assert warm_page_cache([path]) == path.stat().st_size


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="needs the SmolLM2 checkout")
def test_padded_tokenizer_encodes_like_the_original(tmp_path):
    from tokenizers import Tokenizer

    padded = tmp_path / "tokenizer.json"
    padded.write_text(json.dumps(padded_tokenizer_json(SMOLLM2 / "tokenizer.json", 128256), ensure_ascii=False))
    a, b = Tokenizer.from_file(str(SMOLLM2 / "tokenizer.json")), Tokenizer.from_file(str(padded))
    assert b.get_vocab_size() == 128256
    text = "\n \n\n \t 🚀 (normal) 3333 3..3 我想在apple工作 нещо I've 'RE <|im_start|>user"
    assert a.encode(text).ids == b.encode(text).ids


def test_peak_rss_sums_a_worker_process(tmp_path):
    # Parent and a worker each hold ~200 MB at the same time: the tree peak must see both,
    # although the kernel's ru_maxrss only reports the largest single process.
    code = ("import subprocess, sys, numpy as np\n"
            "a = np.ones(200_000_000 // 8)\n"
            "subprocess.run([sys.executable, '-c', 'import numpy as np, time; b = np.ones(200_000_000 // 8); "
            "time.sleep(1.5)'])\n"
            "print(a.sum())\n")
    m = run_measured("tree", [sys.executable, "-c", code], log_path=tmp_path / "log", sync_first=False)
    assert m.max_process_rss_bytes < 350e6
    assert m.peak_tree_rss_bytes > 400e6
    assert m.peak_rss_bytes == max(m.max_process_rss_bytes, m.peak_tree_rss_bytes)
