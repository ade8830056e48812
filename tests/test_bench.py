"""The benchmark's own machinery: the measurement harness and the synthetic model writer."""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from _measure import CommandFailed, run_measured, warm_page_cache  # noqa: E402
from _synthetic_model import llama_tensor_shapes, padded_tokenizer_json, write_random_safetensors  # noqa: E402

MB = 1_000_000
# Allocations are kept small (this runs on shared 2-core machines) but far above the ~35 MB a bare
# `python -c "import numpy"` holds, so each bound below separates the right answer from the wrong one.
# The sampled peaks (anon, tree) need the memory held while the sampler polls: the child holds it
# until the sampler has seen it (a flag file), not for a fixed sleep a loaded machine may not honour.
HOLD_UNTIL_FLAG = ("import os, time\n"
                   "t_end = time.monotonic() + 60\n"
                   "while not os.path.exists({flag!r}) and time.monotonic() < t_end:\n"
                   "    time.sleep(0.01)\n")


@pytest.fixture
def flag_when_sampled(tmp_path, monkeypatch):
    """(flag path, arm(attr, bytes)): the flag appears once the sampler's `attr` peak reaches `bytes`
    (or after 60 s, when the child gives up waiting and the test's bounds decide)."""
    import _measure

    samplers = []

    class Recorded(_measure._TreeSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            samplers.append(self)

    monkeypatch.setattr(_measure, "_TreeSampler", Recorded)
    flag = tmp_path / "seen"

    def arm(attr: str, want: float) -> None:
        def watch():
            t_end = time.monotonic() + 60
            while time.monotonic() < t_end and not (samplers and getattr(samplers[-1], attr) >= want):
                time.sleep(0.01)
            flag.touch()

        threading.Thread(target=watch, daemon=True).start()

    return flag, arm


def test_peak_rss_sees_a_child_allocation(tmp_path, flag_when_sampled):
    # 100 MB touched by the child: the kernel high-water mark must see it, wherever it lands.
    flag, arm = flag_when_sampled
    arm("peak_anon", 100 * MB)
    code = ("import numpy as np\na = np.ones(100 * 10**6 // 8)\n" + HOLD_UNTIL_FLAG.format(flag=str(flag))
            + "print(a.sum())\n")
    m = run_measured("alloc", [sys.executable, "-c", code], log_path=tmp_path / "log", sync_first=False)
    assert m.ok
    assert m.peak_rss_bytes > 100 * MB
    assert m.peak_anon_bytes > 100 * MB
    small = run_measured("small", [sys.executable, "-c", "pass"], sync_first=False)
    assert small.peak_rss_bytes < m.peak_rss_bytes - 80 * MB


def test_a_large_parent_does_not_inflate_the_child(tmp_path):
    # Linux starts a forked child's ru_maxrss at the parent's RSS; the launcher keeps that out.
    ballast = np.ones(150 * MB // 8)
    parent_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert parent_kb * 1024 > 150 * MB  # so an inherited high-water mark would break the bound below
    small = run_measured("small", [sys.executable, "-c", "pass"], sync_first=False)
    assert small.peak_rss_bytes < 100 * MB, small
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


def test_padded_tokenizer_encodes_like_the_original(tmp_path, smollm2_dir):
    from tokenizers import Tokenizer

    padded = tmp_path / "tokenizer.json"
    padded.write_text(json.dumps(padded_tokenizer_json(smollm2_dir / "tokenizer.json", 128256), ensure_ascii=False))
    a, b = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json")), Tokenizer.from_file(str(padded))
    assert b.get_vocab_size() == 128256
    text = "\n \n\n \t 🚀 (normal) 3333 3..3 我想在apple工作 нещо I've 'RE <|im_start|>user"
    assert a.encode(text).ids == b.encode(text).ids


def test_peak_rss_sums_a_worker_process(tmp_path, flag_when_sampled):
    # Parent and a worker each hold 100 MB at the same time: the tree peak must see both, although
    # the kernel's ru_maxrss only reports the largest single process (~135 MB here).
    flag, arm = flag_when_sampled
    arm("peak_total", 200 * MB)
    worker = "import numpy as np\nb = np.ones(100 * 10**6 // 8)\n" + HOLD_UNTIL_FLAG.format(flag=str(flag))
    code = ("import subprocess, sys, numpy as np\n"
            "a = np.ones(100 * 10**6 // 8)\n"
            f"subprocess.run([sys.executable, '-c', {worker!r}])\n"
            "print(a.sum())\n")
    m = run_measured("tree", [sys.executable, "-c", code], log_path=tmp_path / "log", sync_first=False)
    assert m.ok
    assert m.max_process_rss_bytes < 170 * MB
    assert m.peak_tree_rss_bytes > 200 * MB
    assert m.peak_rss_bytes == max(m.max_process_rss_bytes, m.peak_tree_rss_bytes)
