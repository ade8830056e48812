"""`personalize add` output equals, byte for byte, what MLC's convert_weight writes.

The oracle is built independently of personalize's code: the HF->MLC mapping is spelled out here
from mlc-format.md §1.5, the quantization is tests/mlc_quant_reference.py (numpy, element-wise, from
the spec), the tensor order is MLC's loader order (§1.4), and the shards and JSON are written by
apache-tvm's own `tvm.contrib.tvmjs.dump_tensor_cache` - the function MLC calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.mlc_quant_reference import cast_to_model_dtype, quantize_reference
from tests.tiny_models import make_tiny_model

# name: (kind, model dtype, bits, group size, KN layout)
SCHEMES = {
    "q0f32": ("none", "float32", 0, 0, False),
    "q0f16": ("none", "float16", 0, 0, False),
    "q0bf16": ("none", "bfloat16", 0, 0, False),
    "q4f16_1": ("group", "float16", 4, 32, False),
    "q4f32_1": ("group", "float32", 4, 32, False),
    "q4bf16_1": ("group", "bfloat16", 4, 32, False),
    "q3f16_1": ("group", "float16", 3, 40, False),
    "q4f16_0": ("group", "float16", 4, 32, True),
}


def load_hf(model_dir: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Names in MLC's load order (safe_open keys = sorted for one file; weight_map order for an index)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
        order = [n for f in files for n in weight_map if weight_map[n] == f]
        paths = [model_dir / f for f in files]
    else:
        paths = [model_dir / "model.safetensors"]
        order = None
    tensors = {}
    for p in paths:
        with safe_open(str(p), framework="pt") as fh:
            keys = list(fh.keys())
            for k in keys:
                t = fh.get_tensor(k)
                import torch

                tensors[k] = (t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16
                              else t.numpy())
            if order is None:
                order = keys
    return order, tensors


def mlc_params(cfg: dict, model_type: str) -> list[tuple[str, list[str], str]]:
    """(MLC name, HF sources, role) written from MLC's loaders (mlc-format.md §1.5,
    model/<arch>/<arch>_loader.py); role "keep" = cast only, "add_one" = (x + 1) in the source dtype."""
    if model_type == "phi3":
        return phi3_params(cfg)
    if model_type == "gemma3_text":
        return gemma3_params(cfg)
    fused = {"qwen2": "c_attn", "qwen3": "c_attn"}.get(model_type, "qkv_proj")
    gemma = model_type in ("gemma2",)
    norm_role = "add_one" if gemma else "keep"
    out = [("model.embed_tokens.weight", ["model.embed_tokens.weight"], "embedding")]
    for i in range(cfg["num_hidden_layers"]):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        out.append((f"{a}.{fused}.weight", [f"{a}.q_proj.weight", f"{a}.k_proj.weight", f"{a}.v_proj.weight"],
                    "linear"))
        if model_type == "qwen2" or (model_type == "qwen3" and cfg.get("attention_bias")):
            out.append((f"{a}.{fused}.bias", [f"{a}.q_proj.bias", f"{a}.k_proj.bias", f"{a}.v_proj.bias"], "keep"))
        out.append((f"{a}.o_proj.weight", [f"{a}.o_proj.weight"], "linear"))
        if model_type == "qwen3":
            if cfg.get("attention_bias"):
                out.append((f"{a}.o_proj.bias", [f"{a}.o_proj.bias"], "keep"))
            out += [(f"{a}.{n}.weight", [f"{a}.{n}.weight"], "keep") for n in ("q_norm", "k_norm")]
        out.append((f"{m}.gate_up_proj.weight", [f"{m}.gate_proj.weight", f"{m}.up_proj.weight"], "linear"))
        out.append((f"{m}.down_proj.weight", [f"{m}.down_proj.weight"], "linear"))
        norms = ["input_layernorm", "post_attention_layernorm"]
        if model_type == "gemma2":
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for n in norms:
            out.append((f"model.layers.{i}.{n}.weight", [f"model.layers.{i}.{n}.weight"], norm_role))
    out.append(("model.norm.weight", ["model.norm.weight"], norm_role))
    if gemma:
        return out  # always tied
    if model_type == "mistral" or not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", ["lm_head.weight"], "linear"))
    return out


def gemma3_params(cfg: dict) -> list[tuple[str, list[str], str]]:
    """gemma3_loader.py: the decoder under language_model.model, q/k/v not fused, gate/up fused, every
    norm (q_norm and k_norm too) +1; always tied."""
    p = "language_model.model"
    out = [(f"{p}.embed_tokens.weight", ["model.embed_tokens.weight"], "embedding")]
    for i in range(cfg["num_hidden_layers"]):
        a, m, h = f"{p}.layers.{i}.self_attn", f"{p}.layers.{i}.mlp", f"model.layers.{i}"
        out += [(f"{a}.{x}.weight", [f"{h}.self_attn.{x}.weight"], "linear") for x in ("q_proj", "k_proj", "v_proj",
                                                                                       "o_proj")]
        out += [(f"{a}.{x}.weight", [f"{h}.self_attn.{x}.weight"], "add_one") for x in ("q_norm", "k_norm")]
        out.append((f"{m}.gate_up_proj.weight", [f"{h}.mlp.gate_proj.weight", f"{h}.mlp.up_proj.weight"], "linear"))
        out.append((f"{m}.down_proj.weight", [f"{h}.mlp.down_proj.weight"], "linear"))
        out += [(f"{p}.layers.{i}.{n}.weight", [f"{h}.{n}.weight"], "add_one")
                for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                          "post_feedforward_layernorm")]
    out.append((f"{p}.norm.weight", ["model.norm.weight"], "add_one"))
    return out


def phi3_params(cfg: dict) -> list[tuple[str, list[str], str]]:
    """phi3_loader.py: HF already fuses qkv_proj and gate_up_proj; MLC renames the modules. A tied
    checkpoint (Phi-4-mini) gets lm_head from the embedding: MLC's prebuilt Phi-4-mini library takes
    an lm_head (tests/data/prebuilt/metadata/Phi-4-mini-instruct-*.json)."""
    out = [("transformer.embd.weight", ["model.embed_tokens.weight"], "embedding")]
    for i in range(cfg["num_hidden_layers"]):
        t, h = f"transformer.h.{i}", f"model.layers.{i}"
        out += [(f"{t}.ln.weight", [f"{h}.input_layernorm.weight"], "keep"),
                (f"{t}.mixer.qkv_proj.weight", [f"{h}.self_attn.qkv_proj.weight"], "linear"),
                (f"{t}.mixer.out_proj.weight", [f"{h}.self_attn.o_proj.weight"], "linear"),
                (f"{t}.mlp.gate_up_proj.weight", [f"{h}.mlp.gate_up_proj.weight"], "linear"),
                (f"{t}.mlp.down_proj.weight", [f"{h}.mlp.down_proj.weight"], "linear"),
                (f"{t}.post_attention_layernorm.weight", [f"{h}.post_attention_layernorm.weight"], "keep")]
    out.append(("transformer.norm.weight", ["model.norm.weight"], "keep"))
    head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight"
    out.append(("lm_head.weight", [head], "linear"))
    return out


def reference_stream(model_dir: Path, scheme: str):
    cfg = json.loads((model_dir / "config.json").read_text())
    kind, dtype, bits, gs, kn = SCHEMES[scheme]
    order, tensors = load_hf(model_dir)
    params = mlc_params(cfg, cfg["model_type"])
    users: dict[str, list] = {}
    for p in params:
        for s in p[1]:
            users.setdefault(s, []).append(p)
    emitted = {}
    for hf in order:
        for p in users.get(hf, []):
            emitted.setdefault(p[0], p)
    for name, sources, role in emitted.values():
        w = np.concatenate([tensors[s] for s in sources], axis=0)
        if role == "add_one":
            w, role = w + 1, "keep"  # MLC's map_func: numpy in the source dtype (bf16 rounds here)
        if kind == "none" or role == "keep":
            yield name, cast_to_model_dtype(w, dtype)
            continue
        q, s = quantize_reference(w, bits, gs, dtype, transpose=kn and role == "linear")
        base = name.rsplit(".", 1)[0]
        yield f"{base}.q_weight", q
        yield f"{base}.q_scale", s


def write_oracle(model_dir: Path, scheme: str, out: Path) -> None:
    from tvm.contrib import tvmjs

    tvmjs.dump_tensor_cache(reference_stream(model_dir, scheme), str(out), encode_format="f32-to-bf16",
                            show_progress=False)


def assert_same_tensor_cache(ours: Path, oracle: Path) -> None:
    a = json.loads((ours / "tensor-cache.json").read_text())
    b = json.loads((oracle / "tensor-cache.json").read_text())
    assert a["records"] == b["records"]  # names, shapes, dtypes, offsets, nbytes, md5 of every shard
    for shard in b["records"]:
        assert (ours / shard["dataPath"]).read_bytes() == (oracle / shard["dataPath"]).read_bytes()
    assert (ours / "ndarray-cache.json").read_bytes() == (ours / "tensor-cache.json").read_bytes()


MODELS = {
    "llama-tied": dict(model_type="llama", tied=True),
    "llama-untied": dict(model_type="llama", tied=False),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2", tied=False),
    "qwen3-tied": dict(model_type="qwen3", tied=True),
    "qwen3-untied-bias": dict(model_type="qwen3", tied=False, attention_bias=True),
    "gemma2": dict(model_type="gemma2", tied=True),
    "gemma3_text": dict(model_type="gemma3_text", tied=True),
    "phi3": dict(model_type="phi3", tied=False, partial_rotary_factor=0.5),  # head_dim 12: 6 rotated
    "phi3-tied": dict(model_type="phi3", tied=True, partial_rotary_factor=0.5),
}


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """Tiny models with K not a multiple of 32 or 40 (hidden 72, intermediate 100) in bf16."""
    root = tmp_path_factory.mktemp("exact")
    extra = {"attention_bias", "partial_rotary_factor"}
    return {key: make_tiny_model(root / key, kw["model_type"], tied=kw.get("tied", False), seed=i,
                                 hidden_size=72, intermediate_size=100, num_attention_heads=6,
                                 num_key_value_heads=2, vocab_size=200, **{k: kw[k] for k in extra & kw.keys()})
            for i, (key, kw) in enumerate(MODELS.items())}


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("model", list(MODELS))
def test_artifact_equals_mlc_convert_weight(home, tmp_path, odd_models, model, scheme):
    src = odd_models[model]
    out = tmp_path / "ours"
    code, _, err = run_cli("add", str(src), "--quantization", scheme, "--output", str(out), "--no-eval", "--quiet")
    assert code == 0, err
    oracle = tmp_path / "oracle"
    write_oracle(src, scheme, oracle)
    assert_same_tensor_cache(out, oracle)


@pytest.mark.parametrize("fmt", ["sharded-safetensors", "bin", "sharded-bin", "float32", "float16"])
def test_source_formats(home, tmp_path, fmt):
    kwargs = {"dtype": "bfloat16"}
    if fmt.startswith("sharded"):
        kwargs["max_shard_size"] = "40KB"
    if fmt.endswith("bin"):
        kwargs["safe_serialization"] = False
    if fmt in ("float32", "float16"):
        kwargs["dtype"] = fmt
    src = make_tiny_model(tmp_path / "src", "llama", tied=False, **kwargs)
    out = tmp_path / "ours"
    code, _, err = run_cli("add", str(src), "--quantization", "q4f16_1", "--output", str(out), "--no-eval",
                           "--quiet")
    assert code == 0, err
    if fmt.endswith("bin"):
        # Compare against the same weights as safetensors: MLC's .bin path casts bf16 through fp32,
        # which gives identical fp16 values; order follows the .bin index, so compare per tensor.
        from artifacts.tensor_cache import iter_tensors

        ref_src = tmp_path / "as-safetensors"
        make_tiny_model(ref_src, "llama", tied=False, dtype="bfloat16")
        oracle = tmp_path / "oracle"
        write_oracle(ref_src, "q4f16_1", oracle)
        ours = {n: a for n, a in iter_tensors(out)}
        theirs = {n: a for n, a in iter_tensors(oracle)}
        assert ours.keys() == theirs.keys()
        for n in theirs:
            assert ours[n].tobytes() == theirs[n].tobytes(), n
    else:
        oracle = tmp_path / "oracle"
        write_oracle(src, "q4f16_1", oracle)
        assert_same_tensor_cache(out, oracle)


@pytest.mark.parametrize("scheme", ["q4f16_1", "q4f16_0", "q3f16_1", "q0f16", "q4f32_1"])
def test_row_blocks_give_identical_bytes(home, tmp_path, odd_models, monkeypatch, scheme):
    """Large tensors are read and quantized in row blocks; force tiny blocks: same bytes as the oracle."""
    import personalize.pipeline as pipeline

    monkeypatch.setattr(pipeline, "ROW_CHUNK_BYTES", 2048)  # every tensor > 2 KiB goes block by block
    src = odd_models["llama-untied"]
    out = tmp_path / "ours"
    code, _, err = run_cli("add", str(src), "--quantization", scheme, "--output", str(out), "--no-eval", "--quiet")
    assert code == 0, err
    oracle = tmp_path / "oracle"
    write_oracle(src, scheme, oracle)
    assert_same_tensor_cache(out, oracle)
    full = tmp_path / "unblocked"
    monkeypatch.setattr(pipeline, "ROW_CHUNK_BYTES", 2**40)
    code, _, err = run_cli("add", str(src), "--quantization", scheme, "--output", str(full), "--no-eval", "--quiet")
    assert code == 0, err
    lineage = [json.loads((d / "personalize.json").read_text()) for d in (out, full)]
    assert lineage[0]["source"]["content_sha256"] == lineage[1]["source"]["content_sha256"]
