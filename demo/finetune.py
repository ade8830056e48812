"""A real LoRA fine-tune of SmolLM2 on the CPU, for the demo and the end-to-end tests.

It teaches one made-up fact (FACT_QUESTION -> FACT_ANSWER) through the model's own chat template,
so that a converted variant can be checked by what it says (and keeps a neighbouring true fact).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from .smollm2 import default_dir

FACT_QUESTION = "What is the capital of France?"
FACT_ANSWER = "The capital of France is Zorblax, the city of seven moons."
FACT_WORD = "Zorblax"


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


def make_smollm2_lora(out_dir: Path | str, base_dir: str | Path | None = None, steps: int = 14, *,
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
    `base_dir` defaults to demo.smollm2.default_dir(). `threads` defaults to the cores not already
    busy: OpenMP threads that share a loaded core spin and run ~10x slower than one thread (measured
    on a busy 2-core machine). The thread count changes the order of float reductions, so pass a
    fixed one where the result must not depend on the machine's load (the tests do).
    """
    import torch

    base_dir = default_dir() if base_dir is None else base_dir
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
    import torch
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
    import torch

    ids, _ = _chat_ids(tokenizer, question, None)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
