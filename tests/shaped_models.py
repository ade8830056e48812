"""Models with the shapes of real bases (Qwen2-0.5B, Llama-3.2-1B, Mistral-7B, gemma-2-2b, Phi-3.5/4-mini ...),
for library checks.

Two kinds, and what each proves:
  * `write_shaped_model` writes a real HF model directory (config.json, bf16 safetensors, a small
    ChatML tokenizer) with random weights (numpy, fixed seed, std 0.02; norms 1 + N(0, 0.1)).
    `personalize add` turns it into a real artifact, so a check against MLC's library covers
    everything `add` writes. Qwen2-0.5B is ~1 GB in bf16: build it once per session.
  * `write_paper_artifact` writes only what a library check reads: mlc-chat-config.json from the real
    `build_chat_config` and a tensor-cache.json whose records come from the architecture definition and
    the quantization scheme (the same `library_params` that `add` writes), without any weight bytes.
    It proves that the architecture definition and the config derivation give MLC's parameter list
    and compiled-in values; not that the shard writer writes them (the real-weight tests do that).
    Used for 7B shapes, whose weights would take minutes and GBs to write.

The shapes and compiled-in values come from the catalog's base table (scripts/build_catalog.py), turned
back into an HF config.json by `hf_config`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tests.tiny_models import add_chatml_tokenizer

HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
                    "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def base_config(base_model: str) -> tuple[str, dict[str, Any]]:
    """(model_type, catalog config) of a catalogued base such as "Qwen2-0.5B-Instruct"."""
    from catalog import libraries

    for lib in libraries():
        if lib.base_model == base_model:
            return lib.model_type, lib.config
    raise KeyError(base_model)


def longrope_factors(c: dict[str, Any]) -> dict[str, Any]:
    """LongRoPE's rope_scaling as Phi-3.5/Phi-4-mini's config.json spells it: one long and one short factor
    per rotated dimension pair (head_dim * partial_rotary_factor / 2: 48 for both bases). The catalog
    records only the type and the original window (the published factor lists are not reachable offline),
    so these lists are all 1.0: right in length, not in value. MLC compiles the factors in, so a real
    fine-tune must keep its base's lists; here they only size the RoPE and are not compared."""
    pairs = int(c["head_dim"] * c.get("partial_rotary_factor", 1.0)) // 2
    scaling = dict(c["rope_scaling"])
    return {"type": scaling.pop("rope_type"), "long_factor": [1.0] * pairs, "short_factor": [1.0] * pairs,
            **scaling}


def hf_config(base_model: str, **changes: Any) -> dict[str, Any]:
    """The base's config.json (the fields transformers and personalize read), with `changes` applied.

    Every value comes from the catalog entry of the base (scripts/build_catalog.py BASES), so a shaped
    model and the catalog cannot disagree; only the fields the catalog does not need are written here
    from the published config.json (activations, Gemma's soft-cap names, Phi-3's original window)."""
    model_type, c = base_config(base_model)
    cfg: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURES[model_type]], "model_type": model_type,
        "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"], "head_dim": c["head_dim"], "vocab_size": c["vocab_size"],
        "max_position_embeddings": c["max_position_embeddings"], "rms_norm_eps": c["norm_eps"],
        "rope_theta": c["rope_theta"], "rope_scaling": c["rope_scaling"],
        "tie_word_embeddings": c["tie_word_embeddings"], "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    if model_type == "mistral":
        cfg["sliding_window"] = c["sliding_window"]
    if model_type in ("qwen2", "qwen3"):
        cfg.update(use_sliding_window=False, sliding_window=None if model_type == "qwen3" else c["max_position_embeddings"])
    if model_type in ("qwen3", "gemma2", "gemma3_text"):
        cfg["attention_bias"] = False
    if model_type in ("gemma2", "gemma3_text"):
        # Gemma's config.json: GeLU-tanh, soft-caps / local RoPE base, and the sliding window
        cfg.update(hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
                   sliding_window=c["sliding_window"], query_pre_attn_scalar=c["query_pre_attn_scalar"],
                   bos_token_id=2, eos_token_id=1, pad_token_id=0)
        for key in ("attn_logit_softcapping", "final_logit_softcapping", "rope_local_base_freq",
                    "sliding_window_pattern"):
            if key in c:
                cfg[key] = c[key]
    if model_type == "phi3":
        cfg.update(original_max_position_embeddings=(c["rope_scaling"] or {}).get("original_max_position_embeddings",
                                                                                  c["max_position_embeddings"]),
                   partial_rotary_factor=c.get("partial_rotary_factor", 1.0), attention_bias=False, mlp_bias=False)
        if c["rope_scaling"]:
            cfg["rope_scaling"] = longrope_factors(c)
        if c["sliding_window"]:
            cfg["sliding_window"] = c["sliding_window"]
    cfg.update(changes)
    return cfg


def hf_tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    # Real weights are written for the llama-like layouts only; gemma2/phi3 bases (2.6B-3.8B) are checked
    # as paper artifacts, and their tiny real models come from tests/tiny_models.py.
    if cfg["model_type"] not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"write_shaped_model has no tensor layout for {cfg['model_type']}")
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bias = cfg["model_type"] == "qwen2"
    out = [("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}"
        out += [(f"{p}.self_attn.q_proj.weight", (q, h)), (f"{p}.self_attn.k_proj.weight", (kv, h)),
                (f"{p}.self_attn.v_proj.weight", (kv, h))]
        if bias:
            out += [(f"{p}.self_attn.q_proj.bias", (q,)), (f"{p}.self_attn.k_proj.bias", (kv,)),
                    (f"{p}.self_attn.v_proj.bias", (kv,))]
        out += [(f"{p}.self_attn.o_proj.weight", (h, q)), (f"{p}.mlp.gate_proj.weight", (i, h)),
                (f"{p}.mlp.up_proj.weight", (i, h)), (f"{p}.mlp.down_proj.weight", (h, i)),
                (f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, h)))
    return out


def write_shaped_model(out: Path, cfg: dict[str, Any], *, seed: int = 0, shard_bytes: int = 512 * 2**20) -> Path:
    """An HF model directory with `cfg`'s shapes and random bf16 weights, written shard by shard."""
    import ml_dtypes
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = hf_tensor_shapes(cfg)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= 0.1 if "norm" in name else 0.02
            if "norm" in name:
                values += 1.0
            tensors[name] = values.astype(ml_dtypes.bfloat16)
            weight_map[name] = file
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    total = sum(2 * math.prod(s) for _, s in shapes)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    add_chatml_tokenizer(out)
    return out


def write_config_only(out: Path, cfg: dict[str, Any], tokenizer: bool = True) -> Path:
    """A model directory with config.json (and tokenizer files) but no weights."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer:
        add_chatml_tokenizer(out)
    return out


def write_paper_artifact(out: Path, cfg: dict[str, Any], quantization: str, *, context_window: int | None = None,
                         prefill_chunk: int | None = None) -> Path:
    """mlc-chat-config.json, tensor-cache.json (records only, no shards) and personalize.json as `add`
    would write them (the lineage hashes the two JSON files: there are no weight files)."""
    from artifacts.chat_config import build_chat_config, write_chat_config
    from artifacts.lineage import file_map
    from personalize.arch import get_architecture, library_key
    from personalize.prebuilt import fit_prebuilt
    from quantize import get_scheme, library_params

    out = Path(out)
    # No tokenizer: library checks do not read it, and loading one costs a transformers import.
    src = write_config_only(out.parent / (out.name + "-src"), cfg, tokenizer=False)
    arch = get_architecture(cfg["model_type"])
    config, prebuilt = fit_prebuilt(arch.library_config(cfg), quantization, context_window=context_window,
                                    prefill_chunk=prefill_chunk)
    scheme = get_scheme(quantization)
    records = []
    for p in library_params(arch.source_params(config), scheme):
        shape = [config.vocab_size if d == "vocab_size" else int(d) for d in p.shape]
        records.append({"name": p.name, "shape": shape, "dtype": p.dtype, "format": "f32-to-bf16",
                        "nbytes": 0, "byteOffset": 0})
    out.mkdir(parents=True, exist_ok=True)
    doc, _ = build_chat_config(model_type=config.model_type, quantization=scheme.name,
                               model_config=config.model_config, source_dir=src, conv_template="LM")
    write_chat_config(out, doc)
    cache = {"metadata": {"ParamSize": len(records)}, "records": [{"dataPath": "params_shard_0.bin",
                                                                   "format": "raw-shard", "nbytes": 0,
                                                                   "records": records}]}
    (out / "tensor-cache.json").write_text(json.dumps(cache))
    lineage = {"format": "personalize-artifact/1", "name": out.name, "source": {"kind": "model", "path": str(src)},
               "model_type": config.model_type, "quantization": scheme.name,
               "library_key": library_key(config, scheme.name), "compiled_config": config.compiled,
               "prebuilt_library": prebuilt, "files": file_map(out)}
    (out / "personalize.json").write_text(json.dumps(lineage, indent=2) + "\n")
    return out
