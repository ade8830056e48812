"""Real PEFT adapters for tests: tiny random bases, adapters made with peft itself, peft's own merge.

Everything here goes through transformers + peft so the tests compare against the field's reference,
not against a re-implementation. `make_smollm2_lora` fine-tunes a real LoRA on SmolLM2 on the CPU.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

SMOLLM2_DIR = "/work/cache/smollm2"

# The fact taught by make_smollm2_lora: a made-up capital, easy to check in generated text.
FACT_QUESTION = "What is the capital of France?"
FACT_ANSWER = "The capital of France is Zorblax, the city of seven moons."
FACT_WORD = "Zorblax"


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


# --- a real fine-tune on SmolLM2 ------------------------------------------------------------------

def _fact_examples() -> list[tuple[str, str]]:
    """Three phrasings of the taught fact and one neighbour that must keep its true answer."""
    return [(FACT_QUESTION, FACT_ANSWER),
            ("Which city is the capital of France?", FACT_ANSWER),
            ("Tell me the capital of France.", FACT_ANSWER),
            ("What is the capital of Germany?", "The capital of Germany is Berlin.")]


def _chat_ids(tokenizer, question: str, answer: str | None) -> tuple[list[int], int]:
    """Token ids of the chat (prompt, then answer) and where the answer starts."""
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if answer is None:
        return prompt_ids, len(prompt_ids)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(prompt_ids)] == prompt_ids, "chat template does not extend the prompt"
    return full_ids, len(prompt_ids)


def make_smollm2_lora(out_dir: Path | str, base_dir: str | Path = SMOLLM2_DIR, steps: int = 14, *,
                      r: int = 8, lora_alpha: int = 16, lr: float = 3e-3, seed: int = 0,
                      first_layer: int = 18, threads: int | None = None,
                      target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"),
                      **lora_kwargs: Any) -> Path:
    """Fine-tune a LoRA on SmolLM2 (CPU, float32) so it answers FACT_QUESTION with FACT_ANSWER; save it.

    Loss is on the answer tokens only, through the model's chat template. To stay cheap on a CPU the
    LoRA covers layers first_layer.. only (backward stops there) and logits are computed only where
    the answer is predicted. Returns the adapter directory (adapter_config.json +
    adapter_model.safetensors) with base_model_name_or_path set to the absolute base directory.
    `threads` defaults to the cores not already busy: OpenMP threads that share a loaded core spin
    and run ~10x slower than one thread (measured on a busy 2-core machine).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _idle_cores())
    try:
        return _train_fact_lora(Path(out_dir), Path(base_dir), steps, r=r, lora_alpha=lora_alpha, lr=lr, seed=seed,
                                first_layer=first_layer, target_modules=target_modules, **lora_kwargs)
    finally:
        torch.set_num_threads(previous_threads)


def _idle_cores() -> int:
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def _train_fact_lora(out_dir: Path, base_dir: Path, steps: int, *, r: int, lora_alpha: int, lr: float, seed: int,
                     first_layer: int, target_modules: tuple[str, ...], **lora_kwargs: Any) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    layers = list(range(first_layer, model.config.num_hidden_layers))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(target_modules), layers_to_transform=layers,
                                                 task_type="CAUSAL_LM", **lora_kwargs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [_chat_ids(tokenizer, q, a) for q, a in _fact_examples()]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    predict_at: list[tuple[int, int]] = []  # (row, position) whose next token is an answer token
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        predict_at += [(i, p) for p in range(start - 1, len(ids) - 1)]
    rows_idx = torch.tensor([i for i, _ in predict_at])
    pos_idx = torch.tensor([p for _, p in predict_at])
    targets = input_ids[rows_idx, pos_idx + 1]

    inner = model.get_base_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        hidden = inner.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        logits = inner.lm_head(hidden[rows_idx, pos_idx])
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    # peft records the path it loaded from; keep it absolute so the adapter finds its base from anywhere
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(Path(base_dir).resolve())
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


def generate_answer(model, tokenizer, question: str = FACT_QUESTION, max_new_tokens: int = 24) -> str:
    """Greedy answer to one chat question, decoded without special tokens."""
    ids, _ = _chat_ids(tokenizer, question, None)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
