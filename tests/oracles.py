"""Test oracles shared by the test modules, written from the spec (mlc-format.md), never from product code.

- `dequantize_nk`: MLC's runtime dequantization `(code - max_int) * scale` of group-quantized NK weights;
- `read_tensor_cache`: every tensor of an MLC weight directory, decoded as MLC's loader decodes it.

The product has its own implementations (quantize/, artifacts/tensor_cache.py); the tests compare
against these, so a shared misreading of the format cannot pass unnoticed in both.
"""

from __future__ import annotations

import json
from pathlib import Path

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
