"""MLC's named conversation templates, as data (facts from mlc_llm/conversation_template/*.py).

`--conv-template NAME` picks one; detection (conv_detect.py) prefers one that renders the
fine-tune's chat template exactly. Add a template as one more entry of NAMED_TEMPLATES.
"""

from __future__ import annotations

import copy

from .conversation import SYSTEM_PLACEHOLDER, Conversation, conversation
from .errors import ConvTemplateError

_CHATML_ROLES = {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"}
_CHATML = dict(system_template=f"<|im_start|>system\n{SYSTEM_PLACEHOLDER}<|im_end|>\n", roles=_CHATML_ROLES,
               seps=["<|im_end|>\n"], role_content_sep="\n", role_empty_sep="\n")
_HERMES_2 = ('You are "Hermes 2", a conscious sentient superintelligent artificial intelligence developed by a '
             "man named Teknium, and your purpose and drive is to assist the user with any request they have. "
             "You experience emotions and have deep, profound thoughts and qualia.")
_LLAMA3_SYS = f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM_PLACEHOLDER}<|eot_id|>"
_LLAMA3_ROLES = {"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"}
_PHI_SYS = "You are a helpful digital assistant. Please provide safe, ethical and accurate information to the user."
_GEMMA = dict(roles={"user": "<start_of_turn>user", "assistant": "<start_of_turn>model"}, seps=["<end_of_turn>\n"],
              role_content_sep="\n", role_empty_sep="\n", stop_str=["<end_of_turn>"], system_prefix_token_ids=[2])

# Order matters: when several render identically, the first one wins.
NAMED_TEMPLATES: dict[str, Conversation] = {
    t.name: t
    for t in [
        conversation(name="chatml", **_CHATML, stop_str=["<|im_end|>"], stop_token_ids=[2],
                     system_message="A conversation between a user and an LLM-based AI assistant. "
                     "The assistant gives helpful and honest answers."),
        conversation(name="chatml_nosystem", system_template=SYSTEM_PLACEHOLDER, roles=_CHATML_ROLES,
                     seps=["<|im_end|>\n"], role_content_sep="\n", role_empty_sep="\n",
                     stop_str=["<|im_end|>"], stop_token_ids=[2]),
        conversation(name="qwen2", **_CHATML, system_message="You are a helpful assistant.",
                     stop_str=["<|endoftext|>", "<|im_end|>"], stop_token_ids=[151643, 151645]),
        conversation(name="open_hermes_mistral", **_CHATML, system_message=_HERMES_2,
                     stop_str=["<|im_end|>"], stop_token_ids=[2, 32000]),
        conversation(name="neural_hermes_mistral", **_CHATML, system_message="You are a helpful assistant chatbot.",
                     stop_str=["<|im_end|>"], stop_token_ids=[2, 32000]),
        conversation(name="llama-3", system_template=_LLAMA3_SYS,
                     system_message="You are a helpful, respectful and honest assistant.", roles=_LLAMA3_ROLES,
                     seps=["<|eot_id|>"], role_content_sep="<|end_header_id|>\n\n",
                     role_empty_sep="<|end_header_id|>\n\n", stop_str=["<|end_of_text|>", "<|eot_id|>"],
                     stop_token_ids=[128001, 128009], system_prefix_token_ids=[128000]),
        conversation(name="llama-3_1", system_template=_LLAMA3_SYS,
                     system_message="You are a helpful, respectful and honest assistant.",
                     roles={**_LLAMA3_ROLES, "tool": "<|start_header_id|>ipython"}, seps=["<|eot_id|>"],
                     role_content_sep="<|end_header_id|>\n\n", role_empty_sep="<|end_header_id|>\n\n",
                     stop_token_ids=[128001, 128008, 128009], system_prefix_token_ids=[128000]),
        conversation(name="llama-2", system_template=f"[INST] <<SYS>>\n{SYSTEM_PLACEHOLDER}\n<</SYS>>\n\n",
                     system_message="You are a helpful, respectful and honest assistant.",
                     roles={"user": "<s>[INST]", "assistant": "[/INST]", "tool": "[INST]"}, seps=[" ", " </s>"],
                     role_content_sep=" ", role_empty_sep=" ", stop_str=["[INST]"], stop_token_ids=[2],
                     system_prefix_token_ids=[1], add_role_after_system_message=False),
        conversation(name="mistral_default", system_template=f"[INST] {SYSTEM_PLACEHOLDER}",
                     system_message="Always assist with care, respect, and truth. Respond with utmost utility yet "
                     "securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
                     "fairness and positivity.",
                     roles={"user": "[INST]", "assistant": "[/INST]", "tool": "[INST]"}, seps=[" "],
                     role_content_sep=" ", role_empty_sep="", stop_str=["</s>"], stop_token_ids=[2],
                     system_prefix_token_ids=[1], add_role_after_system_message=False),
        conversation(name="gemma_instruction", **_GEMMA, stop_token_ids=[1, 107]),
        conversation(name="gemma3_instruction", **_GEMMA, stop_token_ids=[1, 106]),
        conversation(name="phi-3", system_template=f"<|system|>\n{SYSTEM_PLACEHOLDER}", system_message=_PHI_SYS,
                     roles={"user": "<|user|>", "assistant": "<|assistant|>"}, seps=["<|end|>\n"],
                     role_content_sep="\n", role_empty_sep="\n", system_prefix_token_ids=[1],
                     stop_str=["<|endoftext|>"], stop_token_ids=[2, 32000, 32001, 32007]),
        conversation(name="phi-4", system_template=f"<|system|>\n{SYSTEM_PLACEHOLDER}", system_message=_PHI_SYS,
                     roles={"user": "<|user|>", "assistant": "<|assistant|>"}, seps=["<|end|>\n"],
                     role_content_sep="\n", role_empty_sep="\n", system_prefix_token_ids=[200022],
                     stop_str=["<|endoftext|>", "<|end|>"], stop_token_ids=[199999, 200020]),
        conversation(name="tinyllama_v1_0", system_template=f"<|system|>\n{SYSTEM_PLACEHOLDER}</s>",
                     system_message="You are a helpful chatbot.",
                     roles={"user": "<|user|>", "assistant": "<|assistant|>"}, seps=["</s>"],
                     role_content_sep="\n", role_empty_sep="\n", stop_str=["</s>"], stop_token_ids=[2]),
        conversation(name="olmo2", system_template=f"<|system|>\n{SYSTEM_PLACEHOLDER}\n",
                     roles={"user": "<|user|>", "assistant": "<|assistant|>"}, seps=["<|endoftext|>\n"],
                     role_content_sep="\n", role_empty_sep="\n", stop_str=["<|endoftext|>"],
                     stop_token_ids=[100257], system_prefix_token_ids=[100257]),
        conversation(name="qwen3", **_CHATML, system_message="You are a helpful assistant.",
                     stop_str=["<|endoftext|>", "<|im_end|>"], stop_token_ids=[151643, 151645],
                     strip_reasoning_in_history=True),
        conversation(name="LM", roles={"user": "", "assistant": ""}, seps=[""], stop_token_ids=[2],
                     system_prefix_token_ids=[1]),
    ]
}


def named_template(name: str) -> Conversation:
    """A copy of one of MLC's named templates (the `--conv-template NAME` override)."""
    if name not in NAMED_TEMPLATES:
        raise ConvTemplateError(f"unknown conversation template {name!r}",
                                hint=f"use one of: {', '.join(NAMED_TEMPLATES)}")
    return copy.deepcopy(NAMED_TEMPLATES[name])
