"""A Llama-3.2-1B-shaped HF model dir with random bf16 weights, for the conversion benchmark.

No Hub access here, so the benchmark builds the shape itself: the config is Llama-3.2-1B's
(hidden 2048, 16 layers, 32/8 heads, intermediate 8192, vocab 128256, tied embeddings, rope theta
500000 with llama3 scaling), the weights are N(0, 0.02) in bf16 (conversion cost does not depend
on the values), written as one model.safetensors like the real repo (2.47 GB).

Tokenizer: llama.cpp's converter only accepts a BPE tokenizer whose pre-tokenizer it recognises
(it hashes the token ids of a fixed probe string). The cheapest valid choice is SmolLM2's
byte-level BPE tokenizer (recognised as "smollm") with its vocab padded to 128256 by entries no
merge can produce; the probe string therefore tokenises exactly as before and the hash still
matches, while both tools see a full 128256-entry vocab (llama.cpp writes every token string into
the GGUF, as it would for Llama 3). Both tools get this same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

LLAMA_32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,          # the (SmolLM2) tokenizer's ids, so config and tokenizer agree
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")

# Bump when the generated content changes, so stale caches are rebuilt.
GENERATOR_VERSION = 1


def llama_tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and shapes in the order transformers' save_pretrained writes them."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter))]
    out.append(("model.norm.weight", (h,)))
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", (v, h)))
    return sorted(out)  # safetensors keeps keys sorted; write data in the same order


def write_random_safetensors(path: Path, shapes: list[tuple[str, tuple[int, ...]]], seed: int = 0,
                             rows_per_chunk: int = 4096) -> int:
    """Stream a bf16 safetensors file: header first, then each tensor a few thousand rows at a time.

    safetensors' own save_file needs every tensor in memory at once (2.5 GB here); the format is a
    length-prefixed JSON header plus raw bytes, so writing it incrementally is straightforward.
    """
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes:
            if name.endswith("norm.weight"):
                f.write(np.ones(shape, dtype=ml_dtypes.bfloat16).tobytes())
                continue
            rows, cols = shape[0], int(np.prod(shape[1:]))
            for r0 in range(0, rows, rows_per_chunk):
                n = min(rows_per_chunk, rows - r0)
                chunk = rng.standard_normal((n, cols), dtype=np.float32)
                chunk *= 0.02
                f.write(chunk.astype(ml_dtypes.bfloat16).tobytes())
    os.replace(tmp, path)
    return offset


def padded_tokenizer_json(src: Path, vocab_size: int) -> dict:
    """SmolLM2's tokenizer.json with unreachable vocab entries appended up to vocab_size."""
    tok = json.loads(src.read_text())
    vocab: dict[str, int] = tok["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    for i in range(vocab_size):
        if i not in used:
            # Multi-character and absent from every merge: BPE can never emit it.
            vocab[f"<|bench_pad_{i}|>"] = i
    return tok


def ensure_llama_1b(out_dir: Path, tokenizer_src: Path, seed: int = 0, log=print) -> Path:
    """Create the model dir once; later calls reuse it (a stamp file records what was written)."""
    out_dir = Path(out_dir)
    stamp = out_dir / ".bench-complete"
    want = {"generator": GENERATOR_VERSION, "seed": seed, "config": LLAMA_32_1B_CONFIG}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out_dir
    if not (tokenizer_src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tokenizer_src}/tokenizer.json not found: the synthetic 1B model borrows "
                                "SmolLM2's tokenizer; pass --smollm2 DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = LLAMA_32_1B_CONFIG
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES[1:]:
        if (tokenizer_src / name).is_file():
            shutil.copyfile(tokenizer_src / name, out_dir / name)
    tok = padded_tokenizer_json(tokenizer_src / "tokenizer.json", cfg["vocab_size"])
    (out_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    shapes = llama_tensor_shapes(cfg)
    log(f"writing random bf16 weights ({sum(int(np.prod(s)) for _, s in shapes) / 1e9:.2f} B params) "
        f"to {out_dir}/model.safetensors ...")
    write_random_safetensors(out_dir / "model.safetensors", shapes, seed=seed)
    stamp.write_text(json.dumps(want))
    return out_dir
