"""Fuzz `add` with mutated safetensors headers, config.json and tokenizer files.

The promise under test (issue 11): whatever the source holds, `add` ends in a verified artifact or
in one typed `UserError` naming a file of the source (the CLI prints it as one line, exit 2) --
never another exception, never a leftover (no partial directory, no output directory).

The cases run in-process through `personalize.add.add_source`, the function the CLI command
calls (a process per case would cost an hour of CI); a handful of the same mutations go through
the real CLI in a subprocess at the end. Hypothesis is derandomized and bounded, so every run
feeds the same 520 cases (about 1-2 minutes on a loaded 2-core machine: tiny models convert in
about 0.2 s, most mutations are refused in milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artifacts.verify import verify_artifact
from personalize_errors import UserError

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# 200 + 160 + 160 + 100 = 620 cases per run.
HEADER_CASES, CONFIG_CASES, TOKENIZER_CASES, ADAPTER_CASES = 200, 160, 160, 100


# --- the entry point and the promise -----------------------------------------------------------

@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Fallbacks(logging.Handler):
    """Warnings that mean a source file was skipped: an artifact quietly worse than its source."""

    QUIET = ("cannot load the tokenizer",)

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(q in message for q in self.QUIET):
            self.seen.append(message)


def add_or_user_error(source: Path, work: Path, base: Path | None = None) -> str:
    """Run `add` on `source` (an adapter: on `base`); assert the promise; return 'ok' or 'refused'."""
    from personalize.add import add_source

    home, out_parent = work / "home", work / "out"
    out_parent.mkdir()
    out = out_parent / "artifact"
    fallbacks = _Fallbacks()
    logging.getLogger().addHandler(fallbacks)
    try:
        with _env(PERSONALIZE_HOME=str(home)):
            add_source(str(source), output=out, evaluate=False, quantization="q4f16_1",
                       base=str(base) if base else None)
    except UserError as exc:
        line = exc.one_line()
        assert "\n" not in line
        assert exc.path is not None, line
        named = Path(exc.path).resolve()
        assert any(named.is_relative_to(d.resolve()) for d in (source, base) if d), line  # a file of the source
        assert list(out_parent.iterdir()) == [], line  # nothing half-written
        outcome = "refused"
    else:
        assert fallbacks.seen == []  # exit 0 must not mean "with a file quietly skipped"
        assert verify_artifact(out) == []
        assert [p.name for p in out_parent.iterdir()] == ["artifact"]
        outcome = "ok"
    finally:
        logging.getLogger().removeHandler(fallbacks)
    artifacts = home / "artifacts"
    assert not artifacts.exists() or list(artifacts.iterdir()) == []  # --output never touches the registry
    return outcome


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="personalize-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def outcomes():
    """Counts per family, so a run that refuses (or accepts) everything shows up."""
    counts: dict[str, dict[str, int]] = {}
    yield counts
    print("\nfuzz outcomes:", json.dumps(counts))


def _case(workdir: Path, tiny_llama: Path) -> tuple[Path, Path]:
    work = Path(tempfile.mkdtemp(dir=workdir))
    src = work / "src"
    shutil.copytree(tiny_llama, src)
    return work, src


def _run(family: str, outcomes: dict, workdir: Path, tiny_llama: Path, mutate) -> None:
    work, src = _case(workdir, tiny_llama)
    try:
        mutate(src)
        result = add_or_user_error(src, work)
        outcomes.setdefault(family, {}).setdefault(result, 0)
        outcomes[family][result] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- JSON values -----------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 7, 64, 96, 320, 2**31, 2**63, 2**64, 10**9, -(2**63), 10**400]
scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTERESTING_INTS), st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.sampled_from(["F32", "BF16", "64"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


# --- safetensors headers -----------------------------------------------------------------------

def _read_st(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_st(path: Path, header, data: bytes, length: int | None = None) -> None:
    blob = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)


int_lists = st.lists(st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(-100, 100_000)), max_size=4)
header_mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 200), st.sampled_from(["dtype", "shape", "data_offsets"]),
              st.one_of(json_values, int_lists,
                        st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "f32", ""]))),
    st.tuples(st.just("drop"), st.integers(0, 200), st.sampled_from(["dtype", "shape", "data_offsets"])),
    st.tuples(st.just("shift"), st.integers(0, 200), st.integers(-64, 64), st.integers(-64, 64)),
    st.tuples(st.just("swap"), st.integers(0, 200), st.integers(0, 200)),
    st.tuples(st.just("remove_tensor"), st.integers(0, 200)),
    st.tuples(st.just("metadata"), json_values),
    st.tuples(st.just("entry"), st.integers(0, 200), json_values),
    st.tuples(st.just("data"), st.integers(-64, 64)),
)
whole_file_mutation = st.one_of(
    st.tuples(st.just("header"), json_values),
    st.tuples(st.just("length"), st.one_of(st.sampled_from([0, 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))),
    st.tuples(st.just("byte"), st.integers(0, 10_000), st.integers(0, 255)),
)


def mutate_safetensors(src: Path, mutations: list, whole: tuple | None, file_name: str = "model.safetensors") -> None:
    path = src / file_name
    header, data = _read_st(path)
    names = sorted(k for k in header if k != "__metadata__")
    pick = lambda i: names[i % len(names)]  # noqa: E731
    for m in mutations:
        kind = m[0]
        if kind == "set" and isinstance(header.get(pick(m[1])), dict):
            header[pick(m[1])][m[2]] = m[3]
        elif kind == "drop" and isinstance(header.get(pick(m[1])), dict):
            header[pick(m[1])].pop(m[2], None)
        elif kind == "shift" and isinstance(header.get(pick(m[1])), dict):
            offsets = header[pick(m[1])].get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
                header[pick(m[1])]["data_offsets"] = [offsets[0] + m[2], offsets[1] + m[3]]
        elif kind == "swap":
            a, b = pick(m[1]), pick(m[2])
            if isinstance(header.get(a), dict) and isinstance(header.get(b), dict):
                header[a]["data_offsets"], header[b]["data_offsets"] = (header[b].get("data_offsets"),
                                                                        header[a].get("data_offsets"))
        elif kind == "remove_tensor":
            header.pop(pick(m[1]), None)
        elif kind == "metadata":
            header["__metadata__"] = m[1]
        elif kind == "entry":
            header[pick(m[1])] = m[2]
        elif kind == "data":
            data = data[:m[1]] if m[1] < 0 else data + b"\0" * m[1]
    if whole is None:
        _write_st(path, header, data)
    elif whole[0] == "header":
        _write_st(path, whole[1], data)
    elif whole[0] == "length":
        _write_st(path, header, data, length=whole[1])
    else:
        blob = bytearray(json.dumps(header).encode())
        blob[whole[1] % len(blob)] = whole[2]
        _write_st(path, bytes(blob), data)


@settings(FUZZ, max_examples=HEADER_CASES)
@given(mutations=st.lists(header_mutation, min_size=1, max_size=3),
       whole=st.one_of(st.none(), st.none(), st.none(), whole_file_mutation))
def test_fuzz_safetensors_header(workdir, outcomes, tiny_llama, mutations, whole):
    _run("safetensors", outcomes, workdir, tiny_llama, lambda src: mutate_safetensors(src, mutations, whole))


# --- config.json ---------------------------------------------------------------------------------

CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "rope_scaling", "tie_word_embeddings", "model_type", "hidden_act", "attention_bias",
               "torch_dtype", "sliding_window", "bos_token_id", "eos_token_id", "architectures"]
config_mutation = st.one_of(
    st.tuples(st.just("set"), st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6)),
              st.one_of(json_values, st.sampled_from(INTERESTING_INTS), st.integers(0, 1024),
                        st.sampled_from(["llama", "qwen2", "mistral", "gpt2", "silu", "gelu"]),
                        st.fixed_dictionaries({"rope_type": st.sampled_from(["llama3", "linear", "default"]),
                                               "factor": json_values}))),
    st.tuples(st.just("delete"), st.sampled_from(CONFIG_KEYS)),
)


def mutate_config(src: Path, mutations: list, raw: bytes | None) -> None:
    path = src / "config.json"
    if raw is not None:
        path.write_bytes(raw)
        return
    config = json.loads(path.read_text())
    for m in mutations:
        if m[0] == "set":
            config[m[1]] = m[2]
        else:
            config.pop(m[1], None)
    path.write_text(json.dumps(config))


@settings(FUZZ, max_examples=CONFIG_CASES)
@given(mutations=st.lists(config_mutation, min_size=1, max_size=3),
       raw=st.one_of(st.none(), st.none(), st.none(), st.none(), st.binary(max_size=40),
                     json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_config(workdir, outcomes, tiny_llama, mutations, raw):
    _run("config", outcomes, workdir, tiny_llama, lambda src: mutate_config(src, mutations, raw))


# --- tokenizer files ---------------------------------------------------------------------------

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
tokenizer_mutation = st.one_of(
    # walk into the document (each int picks a key or an index) and replace or delete what is there
    st.tuples(st.just("set"), st.lists(st.integers(0, 10_000), min_size=1, max_size=4), json_values),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 10_000), min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("replace"), json_values),
    st.tuples(st.just("byte"), st.integers(0, 100_000), st.integers(0, 255)),
)


def _walk_set(doc, path: list[int], value, delete: bool):
    """Replace (or delete) the node that `path` leads to; returns the new document."""
    if not isinstance(doc, (dict, list)) or not doc:
        return doc if delete else value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    if len(path) == 1 or not isinstance(doc[key], (dict, list)) or not doc[key]:
        if delete:
            del doc[key]
        else:
            doc[key] = value
    else:
        doc[key] = _walk_set(doc[key], path[1:], value, delete)
    return doc


def mutate_tokenizer(src: Path, file_name: str, mutation: tuple) -> None:
    path = src / file_name
    raw = path.read_bytes()
    kind = mutation[0]
    if kind in ("set", "delete"):
        doc = _walk_set(json.loads(raw), mutation[1], mutation[2] if kind == "set" else None, kind == "delete")
        path.write_text(json.dumps(doc))
    elif kind == "truncate":
        path.write_bytes(raw[:mutation[1] % max(len(raw), 1)])
    elif kind == "replace":
        path.write_text(json.dumps(mutation[1]))
    else:
        blob = bytearray(raw)
        blob[mutation[1] % len(blob)] = mutation[2]
        path.write_bytes(bytes(blob))


@settings(FUZZ, max_examples=TOKENIZER_CASES)
@given(file_name=st.sampled_from(TOKENIZER_FILES), mutation=tokenizer_mutation)
def test_fuzz_tokenizer_files(workdir, outcomes, tiny_llama, file_name, mutation):
    _run("tokenizer", outcomes, workdir, tiny_llama, lambda src: mutate_tokenizer(src, file_name, mutation))


# --- PEFT adapters: adapter_config.json and the adapter's safetensors header --------------------

ADAPTER_KEYS = ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "fan_in_fan_out",
                "peft_type", "target_modules", "modules_to_save", "trainable_token_indices", "init_lora_weights",
                "layer_replication", "base_model_name_or_path", "bias"]
adapter_config_mutation = st.tuples(
    st.sampled_from(ADAPTER_KEYS),
    st.one_of(json_values, st.sampled_from(INTERESTING_INTS),
              st.dictionaries(st.sampled_from(["q_proj", "v_proj", "(", "*q", "q_proj|v", ".*", "[", "v_proj$"]),
                              st.one_of(st.sampled_from([0, 1, 2, 4, 8, -4]), json_values), max_size=3)))


@pytest.fixture(scope="module")
def tiny_adapter(tiny_llama, workdir):
    from tests.adapter_fixtures import make_tiny_adapter

    return make_tiny_adapter(tiny_llama, workdir / "adapter-src", target_modules=["q_proj", "v_proj", "down_proj"],
                             rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 4})


def mutate_adapter(src: Path, config_mutations: list, header: tuple | None) -> None:
    path = src / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in config_mutations:
        config[key] = value
    path.write_text(json.dumps(config))
    if header is not None:
        mutate_safetensors(src, header[0], header[1], "adapter_model.safetensors")


@settings(FUZZ, max_examples=ADAPTER_CASES)
@given(config_mutations=st.lists(adapter_config_mutation, max_size=2),
       header=st.one_of(st.none(), st.tuples(st.lists(header_mutation, min_size=1, max_size=2),
                                             st.one_of(st.none(), whole_file_mutation))))
def test_fuzz_adapter(workdir, outcomes, tiny_llama, tiny_adapter, config_mutations, header):
    work = Path(tempfile.mkdtemp(dir=workdir))
    src = work / "src"
    shutil.copytree(tiny_adapter, src)
    try:
        mutate_adapter(src, config_mutations, header)
        result = add_or_user_error(src, work, base=tiny_llama)
        outcomes.setdefault("adapter", {}).setdefault(result, 0)
        outcomes["adapter"][result] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the same mutations through the real CLI ---------------------------------------------------

CLI_CASES = {
    "list_header": (lambda src: mutate_safetensors(src, [], ("header", [1, 2])), "model.safetensors"),
    "overlapping_offsets": (lambda src: mutate_safetensors(src, [("swap", 0, 0), ("shift", 1, -8, -8)], None),
                            "model.safetensors"),
    "huge_layer_count": (lambda src: mutate_config(src, [("set", "num_hidden_layers", 10**9)], None), "config.json"),
    "hidden_size_text": (lambda src: mutate_config(src, [("set", "hidden_size", "abc")], None), "config.json"),
    "added_tokens_ints": (lambda src: mutate_tokenizer(src, "tokenizer.json", ("replace", {"added_tokens": [1]})),
                          "tokenizer.json"),
    "truncated_tokenizer_config": (lambda src: mutate_tokenizer(src, "tokenizer_config.json", ("truncate", 40)),
                                   "tokenizer_config.json"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_fuzz_mutations_through_the_cli(case, tiny_llama, tmp_path):
    mutate, file_name = CLI_CASES[case]
    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    mutate(src)
    home, out_parent = tmp_path / "home", tmp_path / "out"
    out_parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "personalize", "add", str(src), "--no-eval", "--quiet",
                           "--output", str(out_parent / "artifact")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PERSONALIZE_HOME": str(home)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and str(src / file_name) in lines[0], proc.stderr
    assert proc.stdout == ""
    assert list(out_parent.iterdir()) == []
    assert not (home / "artifacts").exists() or list((home / "artifacts").iterdir()) == []
