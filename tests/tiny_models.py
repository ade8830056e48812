"""Tiny random HF checkpoints (llama, mistral, qwen2) written with save_pretrained, for tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, rms_norm_eps=1e-5)

SMOLLM2_TOKENIZER = Path("/work/cache/smollm2")


def make_tiny_model(out: Path, model_type: str = "llama", *, tied: bool = True, dtype: str = "bfloat16",
                    seed: int = 0, safe_serialization: bool = True, max_shard_size: str | None = None,
                    scale: float = 0.2, **overrides) -> Path:
    """A random model of `model_type` in `out` (weights scaled so logits are not flat)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(TINY)
    kw.update(overrides)
    if model_type == "mistral":
        tied = False
        kw.setdefault("sliding_window", None)
    config = AutoConfig.for_model(model_type, tie_word_embeddings=tied, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    kwargs = {"safe_serialization": safe_serialization}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    return Path(out)


def add_chatml_tokenizer(model_dir: Path, source: Path = SMOLLM2_TOKENIZER) -> None:
    """Copy a real tokenizer (ids < 320 are used by short ASCII texts) and its chat template."""
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / f).exists():
            shutil.copyfile(source / f, Path(model_dir) / f)


def write_config(model_dir: Path, **changes) -> None:
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=2))
