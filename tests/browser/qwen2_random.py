"""A Qwen2-0.5B-Instruct-shaped HF model directory with random weights and a tokenizer built offline.

The shapes and compiled-in scalars are those of Qwen/Qwen2-0.5B-Instruct's published config.json, so the
artifact `personalize add` makes from it runs on MLC's prebuilt Qwen2-0.5B-Instruct libraries. The
tokenizer is a small byte-level BPE (trained here on a few sentences) padded with never-produced filler
tokens so that Qwen2's special tokens sit at their real ids, with Qwen2-Instruct's chat template (so the
conversation template is detected as MLC's `qwen2`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QWEN2_05B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# Qwen2-0.5B-Instruct's chat template, verbatim.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog. What is the capital of France?",
    "You are a helpful assistant. Hello, how are you today? I am fine, thank you.",
    "Models run in the browser with WebGPU; the library is compiled once and the weights are inputs.",
]


def build_tokenizer_json(vocab_target: int = 400) -> str:
    """A byte-level BPE trained on CORPUS, padded so the specials get Qwen2's ids (all ids < 151936)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_target, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    first_special = min(SPECIAL_TOKENS.values())
    # Filler tokens: in the vocabulary (so ids are dense) but no merge ever produces them.
    for i in range(len(vocab), first_special):
        vocab[f"<|filler_{i}|>"] = i
    doc["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True} for t, i in SPECIAL_TOKENS.items()]
    text = json.dumps(doc, ensure_ascii=False)
    check = Tokenizer.from_str(text)
    assert all(check.token_to_id(t) == i for t, i in SPECIAL_TOKENS.items())
    return text


def write_tokenizer(model_dir: Path) -> None:
    model_dir = Path(model_dir)
    (model_dir / "tokenizer.json").write_text(build_tokenizer_json())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": QWEN2_CHAT_TEMPLATE,
        "model_max_length": 32768, "add_prefix_space": False}, indent=2))
    (model_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}, indent=2))


def _weight_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(HF name, shape, kind) in Qwen2ForCausalLM's order; kind picks the random distribution."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h), "w")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h), "w"), (p + "self_attn.q_proj.bias", (h,), "w"),
                (p + "self_attn.k_proj.weight", (kv, h), "w"), (p + "self_attn.k_proj.bias", (kv,), "w"),
                (p + "self_attn.v_proj.weight", (kv, h), "w"), (p + "self_attn.v_proj.bias", (kv,), "w"),
                (p + "self_attn.o_proj.weight", (h, h), "w"),
                (p + "mlp.gate_proj.weight", (inter, h), "w"), (p + "mlp.up_proj.weight", (inter, h), "w"),
                (p + "mlp.down_proj.weight", (h, inter), "w"),
                (p + "input_layernorm.weight", (h,), "norm"), (p + "post_attention_layernorm.weight", (h,), "norm")]
    out.append(("model.norm.weight", (h,), "norm"))
    return out


def make_qwen2_05b(model_dir: Path, seed: int = 0) -> Path:
    """Write config.json, model.safetensors (bf16, ~1 GB) and the tokenizer; returns model_dir.

    Weights and biases are N(0, 0.02); norm weights 1 + N(0, 0.1), so a misplaced norm changes the logits.
    """
    import torch
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, kind in _weight_shapes(QWEN2_05B_CONFIG):
        x = rng.standard_normal(shape, dtype=np.float32)
        x = x * np.float32(0.1) + np.float32(1.0) if kind == "norm" else x * np.float32(0.02)
        tensors[name] = torch.from_numpy(x).to(torch.bfloat16)
        del x
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(QWEN2_05B_CONFIG, indent=2))
    write_tokenizer(model_dir)
    return model_dir


if __name__ == "__main__":
    import sys

    print(make_qwen2_05b(Path(sys.argv[1])))
