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

PHI3_TEMPLATE = (  # Phi-3.5-mini-instruct's (closes a finished chat with EOS)
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
         "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
         "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
         "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
QWEN3_TEMPLATE = (  # Qwen3's, without its tool-calling branches: thinking stripped from history
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}"
 "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
 "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
 "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
 "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
 "{%- for message in messages %}{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
 "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}"
 "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
 "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}{%- else %}"
 "{%- if '</think>' in content %}{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
 "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}{%- endif %}"
 "{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}"
 "{{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
 "{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}{%- else %}{{- '<|im_start|>' + message.role + '\n' + content }}{%- endif %}"
 "{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
 "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}")

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
    "gemma2": dict(template=GEMMA_TEMPLATE, bos=("<bos>", 2), eos=("<eos>", 1),  # gemma-2-it: gemma's template
                   extra={"<pad>": 0, "<start_of_turn>": 106, "<end_of_turn>": 107}, eos_ids=[1, 107],
                   model_type="gemma2"),
    "phi3": dict(template=PHI3_TEMPLATE, bos=("<s>", 1), eos=("<|endoftext|>", 32000),
                 extra={"<unk>": 0, "</s>": 2, "<|assistant|>": 32001, "<|system|>": 32006, "<|end|>": 32007,
                        "<|user|>": 32010}, eos_ids=[32000, 32001, 32007], model_type="phi3"),
    "qwen3": dict(template=QWEN3_TEMPLATE, bos=None, eos=("<|im_end|>", 151645),
                  extra={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<think>": 151667, "</think>": 151668},
                  eos_ids=[151645, 151643], model_type="qwen3"),
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
