"""Tiny HF model directories (tokenizer + chat template + configs) for the artifacts tests.

No Hub access here, so the tokenizers are WordLevel vocabularies built on the spot, with the
special tokens at the ids the real model families use (so MLC's hard-coded stop ids can match).
"""

from __future__ import annotations

import json
from pathlib import Path

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

FAMILIES = {
    "llama3": dict(template=LLAMA3_TEMPLATE, bos=("<|begin_of_text|>", 128000), eos=("<|eot_id|>", 128009),
                   extra={"<|end_of_text|>": 128001, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007},
                   eos_ids=[128001, 128009], model_type="llama"),
    "qwen2": dict(template=QWEN2_TEMPLATE, bos=None, eos=("<|im_end|>", 151645),
                  extra={"<|endoftext|>": 151643, "<|im_start|>": 151644}, eos_ids=[151645, 151643],
                  model_type="qwen2"),
    "mistral": dict(template=MISTRAL_TEMPLATE, bos=("<s>", 1), eos=("</s>", 2), extra={"<unk>": 0},
                    eos_ids=2, model_type="mistral"),
    "gemma": dict(template=GEMMA_TEMPLATE, bos=("<bos>", 2), eos=("<eos>", 1),
                  extra={"<pad>": 0, "<start_of_turn>": 106, "<end_of_turn>": 107}, eos_ids=[1, 107],
                  model_type="gemma"),
}

WORDS = ["hello", "world", "what", "is", "the", "capital", "of", "france", "paris", "?", "."]


def make_model_dir(root: Path, family: str, *, template_in_tokenizer_config: bool = False) -> Path:
    """A model dir with tokenizer.json, tokenizer_config.json, chat template, config.json, generation_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    specials = dict(spec["extra"])
    if spec["bos"]:
        specials[spec["bos"][0]] = spec["bos"][1]
    specials[spec["eos"][0]] = spec["eos"][1]
    size = max(specials.values()) + 1
    taken = set(specials.values())
    filler = (f"tok{i}" for i in range(10**7))
    words = iter(WORDS)
    vocab = dict(specials)
    for i in range(size + len(WORDS)):
        if i not in taken:
            vocab[next(words, None) or next(filler)] = i
    unk = "<unk>" if "<unk>" in vocab else next(iter(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"][0] if spec["bos"] else None,
        eos_token=spec["eos"][0],
        unk_token=unk,
        additional_special_tokens=[t for t in specials if t not in (unk,)],
    )
    fast.chat_template = spec["template"]
    out = root / family
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    if template_in_tokenizer_config:
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = spec["template"]
        cfg_path.write_text(json.dumps(cfg, indent=2))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    config = {"model_type": spec["model_type"], "vocab_size": len(vocab), "hidden_size": 64,
              "eos_token_id": spec["eos_ids"], "bos_token_id": spec["bos"][1] if spec["bos"] else None,
              "temperature": 0.3}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": spec["eos_ids"], "top_p": 0.9}, indent=2))
    return out
