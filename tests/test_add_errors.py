"""Bad input: one clear line naming the file and the fix, exit code 2, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import struct
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


# --- hostile or damaged inputs (issue 11: items 4-7 and 10) ------------------------------------

def _rewrite_header(st: Path, edit) -> None:
    """Rewrite a safetensors header in place: edit(header, data) -> (header, data)."""
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = edit(json.loads(raw[8:8 + n]), raw[8 + n:])
    blob = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _set(header: dict, which: int, key: str, value) -> dict:
    header[_by_offset(header)[which]][key] = value
    return header


def _drop(header: dict, which: int, key: str) -> dict:
    del header[_by_offset(header)[which]][key]
    return header


def _overlap(header: dict) -> dict:
    """The second tensor reads the first one's bytes (same dtype and size)."""
    first, second = _by_offset(header)[:2]
    header[second] = dict(header[first])
    return header


def _gap(header: dict) -> dict:
    first = _by_offset(header)[0]
    del header[first]  # its bytes stay in the file, owned by no tensor
    return header


BAD_HEADERS = {
    "list_header": lambda h, d: ([h[k] for k in h if k != "__metadata__"], d),
    "entry_not_an_object": lambda h, d: ({**h, _by_offset(h)[0]: [1, 2]}, d),
    "missing_data_offsets": lambda h, d: (_drop(h, 0, "data_offsets"), d),
    "missing_shape": lambda h, d: (_drop(h, 1, "shape"), d),
    "negative_offsets": lambda h, d: (_set(h, 0, "data_offsets", [-8, h[_by_offset(h)[0]]["data_offsets"][1] - 8]), d),
    "overlapping_offsets": lambda h, d: (_overlap(h), d),
    "gap_in_data": lambda h, d: (_gap(h), d),
    "trailing_bytes": lambda h, d: (h, d + b"\0" * 16),
    "negative_dimension": lambda h, d: (_set(h, 0, "shape", [-1] + h[_by_offset(h)[0]]["shape"][1:]), d),
    "metadata_not_strings": lambda h, d: ({**h, "__metadata__": {"format": 1}}, d),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_malformed_safetensors_header(home, model, case):
    """Read as strictly as the safetensors library: one line naming the file, never a traceback or a
    misleading later error (a negative offset used to read header bytes as weights)."""
    st = model / "model.safetensors"
    _rewrite_header(st, BAD_HEADERS[case])
    from safetensors import SafetensorError, safe_open

    with pytest.raises(SafetensorError):  # the library refuses each of these files too
        with safe_open(str(st), framework="numpy"):
            pass
    expect_error(home, str(model), contains=[str(st), "invalid safetensors header"])


@pytest.mark.parametrize("change, key", [
    ({"num_hidden_layers": 300_000}, "num_hidden_layers"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": "abc"}, "hidden_size"),
    ({"intermediate_size": 0}, "intermediate_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"vocab_size": 10**12}, "vocab_size"),
    ({"rms_norm_eps": "x"}, "rms_norm_eps"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ({"model_type": ["llama"]}, "model_type"),
    ({"eos_token_id": "</s>"}, "eos_token_id"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": None}}, "factor"),  # found by the fuzzer
    ({"rope_scaling": {"rope_type": "weird"}}, "rope_type"),
])
def test_bad_config_sizes_name_config_json(home, model, change, key):
    write_config(model, **change)
    expect_error(home, str(model), contains=[str(model / "config.json"), key])


def test_huge_layer_count_fails_fast(home, model, tmp_path):
    """10^9 layers: refused from the tensors present before anything is allocated (it never returned)."""
    write_config(model, num_hidden_layers=10**9)
    proc = subprocess.run([sys.executable, "-m", "personalize", "add", str(model), "--no-eval", "--quiet",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PERSONALIZE_HOME": str(home)})
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert str(model / "config.json") in line and "num_hidden_layers=1000000000" in line
    assert not (tmp_path / "out").exists() and leftovers(home) == []


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


BAD_TOKENIZER_FILES = {
    "tokenizer_json_added_tokens_ints": ("tokenizer.json", lambda p: p.write_text('{"added_tokens": [1]}')),
    "tokenizer_json_bad_vocab": ("tokenizer.json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}}))),
    "tokenizer_config_truncated": ("tokenizer_config.json", _truncate),
    "tokenizer_config_not_an_object": ("tokenizer_config.json", lambda p: p.write_text("[1, 2]")),
    "chat_template_does_not_compile": ("tokenizer_config.json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "chat_template": "{% for m in messages %}{{ m['content'] }}"}))),
    "generation_config_bad_eos": ("generation_config.json", lambda p: p.write_text('{"eos_token_id": [null]}')),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENIZER_FILES))
def test_corrupt_tokenizer_files_are_refused(home, model, case):
    """Never exit 0 with a quietly worse artifact (generic template, the corrupt file copied in)."""
    name, damage = BAD_TOKENIZER_FILES[case]
    damage(model / name)
    expect_error(home, str(model), contains=[str(model / name)])


@pytest.mark.parametrize("field, value", [("rank_pattern", {"q_proj(": 4}), ("alpha_pattern", {"*q": 8}),
                                          ("lora_alpha", "sixteen"), ("r", 0)])
def test_bad_adapter_config_values(home, tmp_path, field, value):
    from tests.adapter_fixtures import make_tiny_adapter, make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    adapter = make_tiny_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), field: value}))
    expect_error(home, str(adapter), "--base", str(base), contains=[str(config_path), field])
