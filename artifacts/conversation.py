"""MLC's `Conversation` (the conv_template of mlc-chat-config.json) and its prompt renderer.

MLC runtimes do not run Jinja: they build prompts from this flat description (system template,
roles, separators). `render_prompt` is a port of the text part of MLC's `Conversation.as_prompt`;
it is the one renderer: conversion checks templates with it and the runtime builds prompts with it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConvTemplateError

SYSTEM_PLACEHOLDER = "{system_message}"
FUNCTION_PLACEHOLDER = "{function_string}"
ROLE_PLACEHOLDERS = {"user": "{user_message}", "assistant": "{assistant_message}", "tool": "{tool_message}"}


@dataclass
class Conversation:
    """One conversation template. Field order is MLC's, which is the order gen_config writes them in."""

    name: str | None = None
    system_template: str = SYSTEM_PLACEHOLDER
    system_message: str = ""
    system_prefix_token_ids: list[int] | None = None
    add_role_after_system_message: bool = True
    roles: dict[str, str] = field(default_factory=dict)
    role_templates: dict[str, str] = field(default_factory=dict)
    messages: list[Any] = field(default_factory=list)
    seps: list[str] = field(default_factory=list)
    role_content_sep: str = ""
    role_empty_sep: str = ""
    stop_str: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    strip_reasoning_in_history: bool = False
    function_string: str = ""
    use_function_calling: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # own every list/dict: templates are copied, then edited
            setattr(self, f.name, copy.deepcopy(getattr(self, f.name)))
        self.role_templates = {**ROLE_PLACEHOLDERS, **(self.role_templates or {})}
        if not self.roles or not self.seps or len(self.seps) > 2:
            raise ConvTemplateError(f"conversation template {self.name!r} needs roles and 1 or 2 seps")

    def to_json(self) -> dict[str, Any]:
        """The conv_template object of mlc-chat-config.json: every field, MLC's order."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Conversation:
        """From a chat config's conv_template (fields a newer MLC adds are ignored)."""
        if not isinstance(doc, dict):
            raise ConvTemplateError("conv_template is not a conversation object",
                                    hint="re-create the artifact with `personalize add`")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in doc.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise ConvTemplateError(f"conv_template is malformed: {exc}",
                                    hint="re-create the artifact with `personalize add`") from None

    def replace(self, **changes: Any) -> Conversation:
        return dataclasses.replace(self, **changes)

    # -- rendering ------------------------------------------------------------------------------
    def render_prompt(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text an MLC runtime builds for chat `messages` ({"role", "content"}).

        A leading system message replaces `system_message` (as MLC's OpenAI-style API does). The
        text excludes `system_prefix_token_ids` (BOS): runtimes prepend those ids after tokenizing.
        """
        system_message = self.system_message
        turns = [(m["role"], m["content"]) for m in messages]
        if turns and turns[0][0] == "system":
            system_message = turns.pop(0)[1]
        if add_generation_prompt:
            turns.append(("assistant", None))
        system = self.system_template.replace(SYSTEM_PLACEHOLDER, system_message)
        seps = list(self.seps) * (2 if len(self.seps) == 1 else 1)
        if self.strip_reasoning_in_history:
            turns = _strip_reasoning(turns)
        parts = [system] if system else []
        for i, (role, content) in enumerate(turns):
            if role not in self.roles:
                raise ConvTemplateError(f"role {role!r} is not supported by conversation template {self.name!r}")
            if content is None:
                parts.append(self.roles[role] + self.role_empty_sep)
                continue
            skip_role = not self.add_role_after_system_message and system and i == 0
            prefix = "" if skip_role else self.roles[role] + self.role_content_sep
            body = self.role_templates[role].replace(ROLE_PLACEHOLDERS[role], content)
            parts.append(prefix + body + seps[role == "assistant"])
        prompt = "".join(parts)
        head, sep, tail = prompt.rpartition(FUNCTION_PLACEHOLDER)
        if sep:
            prompt = head + self.function_string + tail
        return prompt.replace(FUNCTION_PLACEHOLDER, "")

    def prefix_text(self, id_to_token: Callable[[int], str | None]) -> str | None:
        """The text of `system_prefix_token_ids` in a given vocabulary; None if an id is not in it."""
        out = []
        for tid in self.system_prefix_token_ids or []:
            tok = id_to_token(tid)
            if tok is None:
                return None
            out.append(tok)
        return "".join(out)

    def prompt_token_ids(self, messages: Sequence[dict[str, Any]], encode: Callable[[str], Sequence[int]], *,
                         add_generation_prompt: bool = True) -> list[int]:
        """Token ids an MLC runtime feeds the model: system_prefix_token_ids (BOS) + the encoded prompt.

        `encode` must not add the tokenizer's own special tokens, as MLC's tokenizers do not.
        """
        text = self.render_prompt(messages, add_generation_prompt=add_generation_prompt)
        return list(self.system_prefix_token_ids or []) + list(encode(text))


def _strip_reasoning(messages: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=-1)
    out = []
    for i, (role, content) in enumerate(messages):
        if role == "assistant" and i < last_user and isinstance(content, str) and "</think>" in content:
            content = content.split("</think>")[-1].lstrip("\n")
        out.append((role, content))
    return out


def conversation(**fields: Any) -> Conversation:
    """A Conversation from keyword fields; an unknown field is a ConvTemplateError, not a TypeError."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(Conversation)}
    if unknown:
        raise ConvTemplateError(f"unknown conversation fields: {sorted(unknown)}")
    return Conversation(**fields)


# Function forms of the methods, for callers that hold a conversation and messages.
def render_prompt(conv: Conversation, messages: Sequence[dict[str, Any]], *,
                  add_generation_prompt: bool = True) -> str:
    return conv.render_prompt(messages, add_generation_prompt=add_generation_prompt)


def prefix_text(conv: Conversation, id_to_token: Callable[[int], str | None]) -> str | None:
    return conv.prefix_text(id_to_token)


def prompt_token_ids(conv: Conversation, messages: Sequence[dict[str, Any]], tokenizer: Any, *,
                     add_generation_prompt: bool = True) -> list[int]:
    """With a transformers tokenizer (encoded without its own special tokens)."""
    return conv.prompt_token_ids(messages, lambda text: tokenizer.encode(text, add_special_tokens=False),
                                 add_generation_prompt=add_generation_prompt)
