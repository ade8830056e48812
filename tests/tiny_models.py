"""Tiny random HF checkpoints (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3) written with
save_pretrained, for tests."""

from __future__ import annotations

import json
from pathlib import Path

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, rms_norm_eps=1e-5)


# What each architecture needs beyond TINY (transformers' own defaults are sized for real models).
TYPE_DEFAULTS: dict[str, dict] = {
    "qwen3": dict(head_dim=24),  # explicit and != hidden/heads, as in real Qwen3 (128 vs 2560/32)
    # MLC's gemma2 library applies no attention soft-cap and scales by head_dim**-0.5: configs where
    # transformers computes the same (query_pre_attn_scalar == head_dim, no attention soft-cap)
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=128, attn_logit_softcapping=None,
                   final_logit_softcapping=30.0),
    # gemma3_text: MLC's library uses rope_theta on every layer, so the tiny model's local base equals it
    "gemma3_text": dict(head_dim=16, sliding_window=128, rope_theta=1_000_000.0, rope_local_base_freq=1_000_000.0),
    # Phi-4-mini's shape in small: longrope factors (made in make_tiny_model) and a partial rotary width
    "phi3": dict(partial_rotary_factor=0.75, original_max_position_embeddings=64, pad_token_id=0),
}


def make_tiny_model(out: Path, model_type: str = "llama", *, tied: bool = True, dtype: str = "bfloat16",
                    seed: int = 0, safe_serialization: bool = True, max_shard_size: str | None = None,
                    scale: float = 0.2, norm_grid: float | None = None, **overrides) -> Path:
    """A random model of `model_type` in `out` (weights scaled so logits are not flat).

    `norm_grid`: round norm weights to multiples of it (gemma stores 1 + w; on a 1/32 grid that sum
    is exact in bf16, so a library computing with it can be compared with transformers at 1e-4).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(TINY)
    kw.update(overrides)
    if model_type == "mistral":
        tied = False
        kw.setdefault("sliding_window", None)
    for key, value in TYPE_DEFAULTS.get(model_type, {}).items():
        kw.setdefault(key, value)
    if model_type == "phi3" and "rope_scaling" not in kw:  # one factor per rotated pair of dimensions
        pairs = int(kw["hidden_size"] // kw["num_attention_heads"] * kw["partial_rotary_factor"]) // 2
        kw["rope_scaling"] = {"type": "longrope", "long_factor": [1.0 + 0.8 * i for i in range(pairs)],
                              "short_factor": [1.0 + 0.3 * i for i in range(pairs)]}
    config = AutoConfig.for_model(model_type, tie_word_embeddings=tied, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and norm_grid:
                p.copy_(torch.round(0.2 * torch.randn_like(p) / norm_grid) * norm_grid)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    kwargs = {"safe_serialization": safe_serialization}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out, **kwargs)
    return Path(out)


CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def add_chatml_tokenizer(model_dir: Path) -> None:
    """A real byte-level BPE tokenizer with 259 ids (3 specials + 256 bytes) and a ChatML template.

    Small enough for the tiny models' vocab, so chat prompts, generation and the equivalence gate
    run on them end to end.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    model_dir = Path(model_dir)
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE,
        "model_max_length": 256}, indent=2))
    (model_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                                  "pad_token_id": 2}, indent=2))


def write_config(model_dir: Path, **changes) -> None:
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=2))
