"""Shared pieces of bench/quality.py: windows, the bf16 reference, artifact -> transformers weights, metrics.

Windows follow llama-perplexity -c 512: the text tokenized once (HF tokenizer, no BOS: SmolLM2's
tokenizer adds none), cut into floor(n/512) chunks; logits at positions 256..510 score tokens
257..511 (255 per chunk). The reference is transformers in float32 on the source (bf16) weights.
Our artifacts are scored by transformers on the artifact's dequantized weights ((code - zero) *
scale, unfused back into HF names); tests/test_calibration.py checks that this equals our compiled
library's logits on a calibrated artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CTX = 512
FIRST_SCORED = CTX // 2


def windows(tokenizer, text: str, ctx: int = CTX) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i * ctx : (i + 1) * ctx] for i in range(len(ids) // ctx)]


def load_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def scored_log_probs(model, chunks: list[list[int]]) -> list[np.ndarray]:
    """log-softmax at the scored positions of every chunk, float32 [255, vocab] each."""
    import torch

    out = []
    with torch.no_grad():
        for ids in chunks:
            logits = model(torch.tensor([ids])).logits[0, FIRST_SCORED : len(ids) - 1].float()
            out.append(torch.log_softmax(logits, dim=-1).numpy())
    return out


@dataclass
class Metrics:
    ppl: float
    kl: float
    top1: float
    tokens: int


def compare(ref: list[np.ndarray], test: list[np.ndarray], chunks: list[list[int]]) -> Metrics:
    nll, kl, agree, n = 0.0, 0.0, 0, 0
    for r, t, ids in zip(ref, test, chunks):
        targets = np.asarray(ids[FIRST_SCORED + 1 :])
        nll -= float(t[np.arange(len(targets)), targets].sum())
        pr = np.exp(r)
        kl += float((pr * (r - t)).sum())
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        n += len(targets)
    return Metrics(float(np.exp(nll / n)), kl / n, agree / n, n)


def ref_perplexity(ref: list[np.ndarray], chunks: list[list[int]]) -> float:
    return compare(ref, ref, chunks).ppl


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray, bits: int, group_size: int, k: int,
               transposed: bool) -> np.ndarray:
    """(code - max_int) * scale, float32 [N, K], from MLC's packed tensors."""
    if transposed:
        q_weight, q_scale = q_weight.T, q_scale.T
    epu = 32 // bits
    mi = (1 << (bits - 1)) - 1
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    codes = (np.ascontiguousarray(q_weight)[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    codes = codes.reshape(q_weight.shape[0], -1)[:, :k].astype(np.float32)
    scales = np.repeat(np.asarray(q_scale, dtype=np.float32), group_size, axis=1)[:, :k]
    return (codes - mi) * scales


def artifact_state_dict(artifact_dir: Path, model_dir: Path) -> dict[str, np.ndarray]:
    """The artifact's weights dequantized and unfused into the HF model's names (float32)."""
    import json

    from artifacts.tensor_cache import iter_tensors
    from personalize.arch import get_architecture
    from quantize import get_scheme

    lineage = json.loads((Path(artifact_dir) / "personalize.json").read_text())
    scheme = get_scheme(lineage["quantization"])
    hf_config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = get_architecture(hf_config["model_type"])
    params = {p.name: p for p in arch.source_params(arch.library_config(hf_config))}
    by_module = {p.module: p for p in params.values()}
    tensors = dict(iter_tensors(Path(artifact_dir)))
    out: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        if name.endswith(".q_scale"):
            continue
        if name.endswith(".q_weight"):
            module = name[: -len(".q_weight")]
            p = by_module[module]
            w = dequantize(arr, tensors[f"{module}.q_scale"], scheme.bits, scheme.group_size, p.shape[1],
                           scheme.transposes(p.role))
        else:
            p = params[name]
            w = np.asarray(arr, dtype=np.float32)
        rows = p.source_rows or (w.shape[0],)
        start = 0
        for source, r in zip(p.sources, rows):
            out[source] = w[start : start + r] if w.ndim > 1 else w
            start += r
    return out


def load_state(model, state: dict[str, np.ndarray]) -> None:
    import torch

    sd = model.state_dict()
    with torch.no_grad():
        for name, arr in state.items():
            sd[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)))
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
