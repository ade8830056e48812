"""Bad input: one clear line naming the file and the fix, exit code 2, nothing left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import run_cli
from tests.tiny_models import add_chatml_tokenizer, make_tiny_model, write_config


def leftovers(home: Path, out_parent: Path | None = None) -> list[str]:
    """Anything an add could have left: artifacts, staging dirs, partial outputs."""
    found = []
    for root in [home / "artifacts", home / ".staging"] + ([out_parent] if out_parent else []):
        if root.exists():
            found += [p.name for p in root.iterdir() if p.name != "src"]
    return found


@pytest.fixture
def model(tmp_path, tiny_llama) -> Path:
    d = tmp_path / "src"
    shutil.copytree(tiny_llama, d)
    return d


def expect_error(home: Path, *args: str, contains: list[str]) -> str:
    code, out, err = run_cli("add", *args, "--no-eval", "--quiet")
    assert code == 2, (code, out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for text in contains:
        assert text in lines[0], (text, lines[0])
    assert out == ""
    assert leftovers(home) == []
    return lines[0]


def test_missing_config(home, model):
    (model / "config.json").unlink()
    expect_error(home, str(model), contains=["config.json", str(model)])


def test_missing_directory(home, tmp_path):
    expect_error(home, str(tmp_path / "nope"), contains=["does not exist"])


def test_unknown_model_type(home, model):
    write_config(model, model_type="gpt_neox")
    line = expect_error(home, str(model), contains=["gpt_neox", "config.json"])
    assert "llama" in line and "qwen2" in line and "mistral" in line


def test_invalid_config_json(home, model):
    (model / "config.json").write_text("{not json")
    expect_error(home, str(model), contains=["config.json", "not valid JSON"])


def test_truncated_safetensors(home, model):
    st = model / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    expect_error(home, str(model), contains=["model.safetensors", "truncated"])


def test_corrupt_safetensors_header(home, model):
    st = model / "model.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage-garbage!" + b"\x00" * 64)
    expect_error(home, str(model), contains=["model.safetensors"])


def test_index_names_missing_shard(home, tmp_path):
    d = make_tiny_model(tmp_path / "src", "llama", max_shard_size="60KB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    expect_error(home, str(d), contains=[shards[-1].name, "missing"])


def test_tensor_of_wrong_shape(home, model):
    st = model / "model.safetensors"
    tensors = load_file(st)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = np.zeros((tensors[name].shape[0] - 1, tensors[name].shape[1]), tensors[name].dtype)
    save_file(tensors, st)
    expect_error(home, str(model), contains=[name, "shape", "model.safetensors"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight(home, tmp_path, bad):
    d = make_tiny_model(tmp_path / "src", "llama", dtype="float32")
    st = d / "model.safetensors"
    tensors = load_file(st)
    tensors["model.layers.0.self_attn.k_proj.weight"][3, 5] = bad
    save_file(tensors, st)
    expect_error(home, str(d), contains=["NaN or Inf", "qkv_proj", "model.safetensors"])


def test_read_only_output(home, model, tmp_path):
    """An output location nobody may write (sysfs refuses even root): one line, nothing written."""
    if os.geteuid() == 0:
        target = Path("/sys/personalize-test-output")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    code, out, err = run_cli("add", str(model), "--no-eval", "--quiet", "--output", str(target))
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and str(target.parent) in err
    assert not target.exists()


def test_output_location_is_a_file(home, model, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, _, err = run_cli("add", str(model), "--no-eval", "--quiet", "--output", str(blocker / "out"))
    assert code == 2, err
    assert "blocker" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "x"


def test_full_disk(home, tmp_path):
    """A write that fails mid-way (file size limit, as a full disk does) leaves nothing behind."""
    d = make_tiny_model(tmp_path / "src", "llama", dtype="float32", hidden_size=128, intermediate_size=256)
    add_chatml_tokenizer(d)
    out = tmp_path / "outdir"
    out.mkdir()
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))\n"
        "from personalize.cli import main\n"
        "sys.argv = ['personalize', 'add', sys.argv[1], '--output', sys.argv[2], '--quantization', 'q0f32',"
        " '--no-eval', '--quiet']\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(d), str(out / "artifact")], capture_output=True,
                          text=True, env={**os.environ, "PERSONALIZE_HOME": str(home)}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "File too large" in proc.stderr and str(out / "artifact") in proc.stderr
    assert list(out.iterdir()) == []


def test_interrupted_run_leaves_nothing(home, tiny_llama, tmp_path):
    """Ctrl-C in the middle of writing: exit 2, no artifact, no temp dir."""
    out = tmp_path / "outdir"
    out.mkdir()
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)\n"
        "import artifacts.tensor_cache as tc\n"
        "original = tc.TensorCacheWriter.add\n"
        "count = [0]\n"
        "def add(self, name, array):\n"
        "    count[0] += 1\n"
        "    if count[0] == 5:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return original(self, name, array)\n"
        "tc.TensorCacheWriter.add = add\n"
        "from personalize.cli import main\n"
        "sys.argv = ['personalize', 'add', sys.argv[1], '--output', sys.argv[2], '--no-eval', '--quiet']\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_llama), str(out / "artifact")],
                          capture_output=True, text=True, env={**os.environ, "PERSONALIZE_HOME": str(home)},
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "interrupted" in proc.stderr
    assert list(out.iterdir()) == []


def test_unknown_quantization(home, model):
    line = expect_error(home, str(model), "--quantization", "q5f16_9", contains=["q5f16_9"])
    assert "q4f16_1" in line


def test_existing_name_refused_then_forced(home, model):
    code, _, err = run_cli("add", str(model), "--no-eval", "--quiet", "--name", "m")
    assert code == 0, err
    code, _, err = run_cli("add", str(model), "--no-eval", "--quiet", "--name", "m")
    assert code == 2 and "already exists" in err
    code, _, err = run_cli("add", str(model), "--no-eval", "--quiet", "--name", "m", "--force")
    assert code == 0, err
    assert sorted(p.name for p in (home / "artifacts").iterdir()) == ["m"]
