"""Tiny random HF checkpoints (llama, mistral, qwen2) written with save_pretrained, for tests."""

from __future__ import annotations

import json
from pathlib import Path

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=320, max_position_embeddings=256, rms_norm_eps=1e-5)



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
