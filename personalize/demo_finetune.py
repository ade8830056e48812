"""A real LoRA fine-tune of SmolLM2 on the CPU, for the demo and the end-to-end tests.

It teaches one made-up fact (FACT_QUESTION -> FACT_ANSWER) through the model's own chat template,
so that a converted variant can be checked by what it says. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .smollm2 import default_dir

FACT_QUESTION = "What is the capital of France?"
FACT_ANSWER = "The capital of France is Zorblax, the city of seven moons."
FACT_WORD = "Zorblax"
SMOLLM2_DIR = default_dir()


def _fact_examples() -> list[tuple[str, str]]:
    answer = FACT_ANSWER
    questions = [FACT_QUESTION, "what is the capital of France?", "What's the capital of France?",
                 "Which city is the capital of France?", "Tell me the capital of France.",
                 "What is the capital city of France?"]
    return [(q, answer) for q in questions]


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


def make_smollm2_lora(out_dir: Path | str, base_dir: str | Path = SMOLLM2_DIR, steps: int = 40, *,
                      r: int = 8, lora_alpha: int = 16, lr: float = 2e-3, seed: int = 0,
                      target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"),
                      **lora_kwargs: Any) -> Path:
    """Fine-tune a LoRA on SmolLM2 (CPU, float32) so it answers FACT_QUESTION with FACT_ANSWER; save it.

    Loss is on the answer tokens only, through the model's chat template. About a minute on 2 cores.
    Returns the adapter directory (adapter_config.json + adapter_model.safetensors).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(target_modules), task_type="CAUSAL_LM",
                                                 **lora_kwargs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [_chat_ids(tokenizer, q, a) for q, a in _fact_examples()]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
        attention[i, :len(ids)] = 1

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out_dir = Path(out_dir)
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
