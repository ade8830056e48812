"""Real PEFT adapters for tests: tiny random bases, adapters made with peft itself, peft's own merge.

Everything here goes through transformers + peft so the tests compare against the field's reference,
not against a re-implementation. The real LoRA on SmolLM2 is the `smollm2_lora` fixture (conftest).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def make_tiny_base(out_dir: Path | str, *, arch: str = "llama", tie: bool = False, hidden: int = 32,
                   vocab: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random float32 llama/qwen2/gpt2 model saved with save_pretrained (safetensors)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, \
        Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3 // 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=tie, max_position_embeddings=128)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, vocab_size=vocab,
                                           n_positions=128, bos_token_id=0, eos_token_id=0,
                                           tie_word_embeddings=tie))
    else:
        raise ValueError(arch)
    out_dir = Path(out_dir)
    model.to(torch.float32).save_pretrained(out_dir)
    return out_dir


def load_base(base_dir: Path | str, resize_to: int | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if resize_to is not None:
        torch.manual_seed(1234)  # resize draws the new rows at random; keep them reproducible
        model.resize_token_embeddings(resize_to, mean_resizing=False)
    return model


def make_tiny_adapter(base_dir: Path | str, out_dir: Path | str, *, resize_to: int | None = None,
                      safe_serialization: bool = True, seed: int = 1, **lora_kwargs: Any) -> Path:
    """A LoRA made by peft on the tiny base, with every trainable tensor perturbed (not peft's zero B)."""
    from peft import LoraConfig, get_peft_model

    model = load_base(base_dir, resize_to)
    lora_kwargs.setdefault("r", 4)
    lora_kwargs.setdefault("lora_alpha", 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=gen)
            if "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * noise)  # keep the DoRA magnitude near the weight norm, but not on it
            elif "lora_" in name:
                param.copy_(0.1 * noise)
            else:  # modules_to_save copies, trainable tokens, biases
                param.add_(0.05 * noise)
    out_dir = Path(out_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.save_pretrained(out_dir, safe_serialization=safe_serialization)
    return out_dir


def peft_merged_state_dict(base_dir: Path | str, adapter_dir: Path | str,
                           resize_to: int | None = None) -> dict[str, np.ndarray]:
    """The reference: PeftModel.from_pretrained(...).merge_and_unload(), as float32 numpy arrays."""
    from peft import PeftModel

    model = load_base(base_dir, resize_to)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in merged.state_dict().items()}


def iter_base_tensors(base_dir: Path | str) -> Iterator[tuple[str, np.ndarray]]:
    """The base's tensors one at a time, as the pipeline streams them."""
    from safetensors import safe_open

    for path in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key).to(torch.float32).numpy()


def base_shapes_and_config(base_dir: Path | str) -> tuple[dict[str, tuple[int, ...]], dict]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(base_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes, json.loads((Path(base_dir) / "config.json").read_text())


def merge_with_ingest(base_dir: Path | str, adapter_dir: Path | str) -> dict[str, np.ndarray]:
    """Our streamed merge of every base tensor."""
    from ingest.adapter import load_adapter
    from ingest.merge import merge_tensor

    adapter = load_adapter(Path(adapter_dir))
    shapes, config = base_shapes_and_config(base_dir)
    adapter.check_against_base(shapes, config)
    return {name: merge_tensor(adapter, name, tensor) for name, tensor in iter_base_tensors(base_dir)}
