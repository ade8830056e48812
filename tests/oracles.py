"""Test oracles shared by the test modules, written from the spec (mlc-format.md), never from product code.

- `dequantize_nk`: MLC's runtime dequantization `(code - max_int) * scale` of group-quantized NK weights;
- `read_tensor_cache`: every tensor of an MLC weight directory, decoded as MLC's loader decodes it;
- `hf_state_from_artifact`: the HF state dict an artifact's library effectively computes with
  (fusion undone, group-quantized weights dequantized, KN layouts transposed back);
- `hf_logits`: transformers (float32) logits of a model dir, optionally on another state dict.

The product has its own implementations (quantize/, artifacts/tensor_cache.py); the tests compare
against these, so a shared misreading of the format cannot pass unnoticed in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np


def dequantize_nk(q_weight: np.ndarray, q_scale: np.ndarray, k: int, *, bits: int = 4, group: int = 32) -> np.ndarray:
    """W[N, k] in float64 from q_weight[N, words] (codes packed low bits first) and q_scale[N, groups]."""
    epu = 32 // bits
    max_int = (1 << (bits - 1)) - 1
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    codes = (q_weight[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    codes = codes.reshape(q_weight.shape[0], -1)[:, :k].astype(np.float64)
    scale = np.repeat(q_scale.astype(np.float64), group, axis=1)[:, :k]
    return (codes - max_int) * scale


def _numpy_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def read_tensor_cache(artifact: Path) -> dict[str, np.ndarray]:
    """{name: array} of tensor-cache.json's records; f32-to-bf16 float32 records widened back to float32."""
    artifact = Path(artifact)
    doc = json.loads((artifact / "tensor-cache.json").read_text())
    out = {}
    for shard in doc["records"]:
        data = (artifact / shard["dataPath"]).read_bytes()
        assert len(data) == shard["nbytes"], shard["dataPath"]
        for r in shard["records"]:
            raw = data[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            if r["dtype"] == "float32" and r["format"] == "f32-to-bf16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:  # tvmjs labels every record with the cache's format; only float32 is re-encoded
                arr = np.frombuffer(raw, _numpy_dtype(r["dtype"]))
            out[r["name"]] = arr.reshape(r["shape"])
    return out


class GroupFormat(NamedTuple):
    bits: int
    group: int
    layout: str  # "NK" or "KN" (Linear q_weight/q_scale transposed; embeddings never are)


# mlc-format.md §3 table: the group-quantized schemes' storage. No-quant schemes are absent.
GROUP_FORMATS = {
    "q3f16_0": GroupFormat(3, 40, "KN"), "q3f16_1": GroupFormat(3, 40, "NK"),
    "q4f16_0": GroupFormat(4, 32, "KN"), "q4f16_1": GroupFormat(4, 32, "NK"),
    "q4f16_2": GroupFormat(4, 32, "NK"), "q4bf16_0": GroupFormat(4, 32, "KN"),
    "q4bf16_1": GroupFormat(4, 32, "NK"), "q4f32_1": GroupFormat(4, 32, "NK"),
}


def dequantize(module: str, q_weight: np.ndarray, q_scale: np.ndarray, k: int, fmt: GroupFormat) -> np.ndarray:
    """W[N, k] (float64) of one module; KN stores both arrays transposed, except for embeddings."""
    if fmt.layout == "KN" and not module.endswith("embed_tokens"):
        q_weight, q_scale = q_weight.T, q_scale.T
    return dequantize_nk(np.ascontiguousarray(q_weight), np.ascontiguousarray(q_scale), k,
                         bits=fmt.bits, group=fmt.group)


def _in_features(module: str, hf_config: dict) -> int:
    h = hf_config["num_attention_heads"]
    d = hf_config.get("head_dim") or hf_config["hidden_size"] // h
    if "down_proj" in module:
        return hf_config["intermediate_size"]
    if "o_proj" in module:
        return h * d
    return hf_config["hidden_size"]


def hf_state_from_artifact(artifact: Path, hf_config: dict) -> dict:
    """Undo fusion and quantization: the HF state dict (float32 torch tensors) the library computes with."""
    import torch

    artifact = Path(artifact)
    quantization = json.loads((artifact / "mlc-chat-config.json").read_text())["quantization"]
    fmt = GROUP_FORMATS.get(quantization)
    h, kv = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
    d = hf_config.get("head_dim") or hf_config["hidden_size"] // h
    tensors = read_tensor_cache(artifact)
    dense: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        if name.endswith("q_scale"):
            continue
        if name.endswith("q_weight"):
            assert fmt is not None, f"{name} in a {quantization} artifact"
            module = name[: -len(".q_weight")]
            w = dequantize(module, arr, tensors[module + ".q_scale"], _in_features(module, hf_config), fmt)
            dense[module + ".weight"] = w.astype(np.float32)
        else:
            dense[name] = arr.astype(np.float32)
    state = {}
    for name, arr in dense.items():
        if ".qkv_proj." in name:
            q, k_, v = np.split(arr, [h * d, h * d + kv * d], axis=0)
            for part, w in (("q_proj", q), ("k_proj", k_), ("v_proj", v)):
                state[name.replace("qkv_proj", part)] = torch.from_numpy(np.ascontiguousarray(w))
        elif ".gate_up_proj." in name:
            g, u = np.split(arr, 2, axis=0)
            state[name.replace("gate_up_proj", "gate_proj")] = torch.from_numpy(np.ascontiguousarray(g))
            state[name.replace("gate_up_proj", "up_proj")] = torch.from_numpy(np.ascontiguousarray(u))
        else:
            state[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def hf_logits(model_dir: Path, ids: list[int], state_dict: dict | None = None) -> np.ndarray:
    """transformers' float32 logits [len(ids), vocab] of `model_dir` (on `state_dict` when given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected and all("rotary" in m or m == "lm_head.weight" for m in missing), (missing, unexpected)
        if model.config.tie_word_embeddings:
            model.tie_weights()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())
