"""Pick or build the MLC conversation template that reproduces a fine-tune's own chat template.

We render the fine-tune's chat template on marker conversations, then
  1. prefer one of MLC's named templates that renders the very same prompts (possibly with the
     fine-tune's default system message, e.g. SmolLM2 = chatml + its own system message);
  2. otherwise derive a generic Conversation from where the markers land.
Either way the result is checked by rendering it and comparing with the Jinja output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conv_template import NAMED_TEMPLATES, named_template
from .conversation import SYSTEM_PLACEHOLDER, Conversation, conversation
from .errors import ConvTemplateError

# -- detection ------------------------------------------------------------------------------------
HfRender = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> prompt

_SYS, _U1, _A1, _U2 = "SYSMARKERq7", "USERMARKERk2", "ASSTMARKERz9", "USERMARKERw4"


@dataclass
class TokenizerFacts:
    """What detection needs to know about the tokenizer, as plain data."""

    id_to_token: Callable[[int], str | None]
    token_to_id: Callable[[str], int | None]
    bos_token: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)


@dataclass
class Detection:
    """The chosen template and how it was found (recorded in lineage)."""

    conv: Conversation
    method: str  # "named", "named+system_message", "generic", "override"
    named: str | None = None
    checked_prompts: int = 0


def _sample_chats(with_system: bool) -> list[tuple[list[dict[str, str]], bool]]:
    one = [{"role": "user", "content": _U1}]
    two = [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
           {"role": "user", "content": _U2}]
    # an earlier assistant turn with a reasoning block: templates that drop it (Qwen3) only match
    # conversations with strip_reasoning_in_history, and the others only those without
    thinking = [one[0], {"role": "assistant", "content": f"<think>\nTHOUGHTMARKERr5\n</think>\n\n{_A1}"}, two[2]]
    chats = [(one, True), (two, True), (thinking, True)]
    if with_system:
        sys_msg = [{"role": "system", "content": _SYS}]
        chats += [(sys_msg + one, True), (sys_msg + two, True)]
    return chats


def _try_render(render: HfRender, messages: list[dict[str, str]], gen: bool) -> str | None:
    try:
        return render(messages, gen)
    except Exception:  # noqa: BLE001 - templates raise anything (raise_exception) for unsupported chats
        return None


def _renders_like(conv: Conversation, expected: list[tuple[list[dict[str, str]], bool, str]],
                  facts: TokenizerFacts) -> bool:
    prefix = conv.prefix_text(facts.id_to_token)
    if prefix is None:
        return False
    for messages, gen, want in expected:
        if messages[0]["role"] == "system" and conv.system_template == SYSTEM_PLACEHOLDER:
            continue  # such a template cannot wrap a caller's system message (MLC's chatml_nosystem too)
        try:
            got = prefix + conv.render_prompt(messages, add_generation_prompt=gen)
        except ConvTemplateError:
            return False
        if got != want:
            return False
    return True


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def _between(text: str, start_marker: str | None, end_marker: str | None) -> str:
    start = 0 if start_marker is None else text.index(start_marker) + len(start_marker)
    end = len(text) if end_marker is None else text.index(end_marker, start)
    return text[start:end]


def _without_closing_eos(text: str, facts: TokenizerFacts) -> str:
    for tid in facts.eos_token_ids:
        eos = facts.id_to_token(tid)
        if eos and text.endswith(eos):
            return text[: -len(eos)]
    return text


def derive_generic(render: HfRender, facts: TokenizerFacts, name: str = "custom") -> Conversation:
    """Build a Conversation from where marker messages land in the rendered chat template."""
    two = [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
           {"role": "user", "content": _U2}]
    full = _try_render(render, two, True)
    if full is None or not all(m in full for m in (_U1, _A1, _U2)):
        raise ConvTemplateError("the chat template does not render a plain user/assistant/user chat",
                                hint="pass --conv-template NAME")
    closed_pair = _try_render(render, two[:2], False) or ""
    closed_user = _try_render(render, two[:1], False) or ""
    pre = _between(full, None, _U1)
    between_user_asst = _between(full, _U1, _A1)  # = sep_user + role_assistant + role_content_sep
    between_asst_user = _between(full, _A1, _U2)  # = sep_assistant + role_user + role_content_sep
    generation = _between(full, _U2, None)  # = sep_user + role_assistant + role_empty_sep

    sep_asst = _between(closed_pair, _A1, None) if _A1 in closed_pair else ""
    if not between_asst_user.startswith(sep_asst):  # a template may close a finished chat with EOS (Phi-3.5)
        sep_asst = _without_closing_eos(sep_asst, facts)
    if not between_asst_user.startswith(sep_asst):
        sep_asst = ""
    user_role_and_sep = between_asst_user[len(sep_asst):]
    role_content_sep = _common_suffix(user_role_and_sep, between_user_asst)
    role_user = user_role_and_sep[: len(user_role_and_sep) - len(role_content_sep)]
    sep_user_and_role_asst = between_user_asst[: len(between_user_asst) - len(role_content_sep)]
    sep_user = _between(closed_user, _U1, None) if _U1 in closed_user else ""
    if not sep_user_and_role_asst.startswith(sep_user):
        sep_user = _without_closing_eos(sep_user, facts)
    if not sep_user_and_role_asst.startswith(sep_user):
        sep_user = ""
    role_asst = sep_user_and_role_asst[len(sep_user):]
    if not generation.startswith(sep_user_and_role_asst) or not pre.endswith(role_user + role_content_sep):
        raise ConvTemplateError("the chat template's turns do not follow a fixed role/separator pattern",
                                hint="pass --conv-template NAME")
    role_empty_sep = generation[len(sep_user_and_role_asst):]
    no_system_prefix = pre[: len(pre) - len(role_user + role_content_sep)]

    # A BOS rendered once at the very start becomes system_prefix_token_ids, as MLC keeps it.
    prefix_ids = None
    bos = facts.bos_token
    if bos and facts.bos_token_id is not None and full.startswith(bos) and full.count(bos) == 1:
        prefix_ids = [facts.bos_token_id]
        no_system_prefix = no_system_prefix[len(bos):]

    system_template, system_message, add_role_after_system = SYSTEM_PLACEHOLDER, no_system_prefix, True
    with_system = _try_render(render, [{"role": "system", "content": _SYS}, *two], True)
    if with_system is not None and _SYS in with_system and with_system.endswith(full[len(pre):]):
        sys_pre = _between(with_system, None, _SYS)
        if prefix_ids:
            sys_pre = sys_pre[len(bos):] if sys_pre.startswith(bos) else sys_pre
        after_sys = _between(with_system, _SYS, _U1)
        if after_sys.endswith(role_user + role_content_sep):
            sys_suffix = after_sys[: len(after_sys) - len(role_user + role_content_sep)]
        else:
            sys_suffix, add_role_after_system = after_sys, False
        wrapped = sys_pre + SYSTEM_PLACEHOLDER + sys_suffix
        if no_system_prefix.startswith(sys_pre) and no_system_prefix.endswith(sys_suffix) and (
            len(no_system_prefix) >= len(sys_pre) + len(sys_suffix)) and no_system_prefix:
            # the template has a default system message in the same wrapper
            system_template = wrapped
            system_message = no_system_prefix[len(sys_pre): len(no_system_prefix) - len(sys_suffix)]
        elif not no_system_prefix and not add_role_after_system:
            system_template = SYSTEM_PLACEHOLDER  # MLC cannot wrap only when a system message is given
        # else: no default system message: like MLC's chatml_nosystem, keep the default exact and
        # accept that a caller-supplied system message is not wrapped.

    stop_str = [sep_asst.strip()] if sep_asst.strip() else []
    stop_ids = list(facts.eos_token_ids)
    for text in stop_str:
        tid = facts.token_to_id(text)
        if tid is not None and tid not in stop_ids:
            stop_ids.append(tid)
    seps = [sep_user] if sep_user == sep_asst else [sep_user, sep_asst]
    return conversation(
        name=name, system_template=system_template, system_message=system_message,
        system_prefix_token_ids=prefix_ids, add_role_after_system_message=add_role_after_system,
        roles={"user": role_user, "assistant": role_asst}, seps=seps, role_content_sep=role_content_sep,
        role_empty_sep=role_empty_sep, stop_str=stop_str, stop_token_ids=stop_ids,
        strip_reasoning_in_history=_strips_reasoning(render),
    )  # fmt: skip


def _strips_reasoning(render: HfRender) -> bool:
    """Does the template drop `<think>...</think>` from earlier assistant turns (Qwen3)? MLC's
    `strip_reasoning_in_history` does the same."""
    thinking = _sample_chats(with_system=False)[2][0]
    text = _try_render(render, thinking, True)
    return text is not None and _A1 in text and "THOUGHTMARKERr5" not in text


def _stop_ids_fit(conv: Conversation, facts: TokenizerFacts) -> bool:
    """Named templates hard-code stop ids of their model family; keep them only if this vocab agrees."""
    for tid in conv.stop_token_ids:
        tok = facts.id_to_token(tid)
        if tok is None or not (tid in facts.eos_token_ids or tok in conv.stop_str):
            return False
    return bool(conv.stop_token_ids)


def detect_conv_template(render: HfRender, facts: TokenizerFacts, *, override: str | None = None) -> Detection:
    """Choose the Conversation that reproduces `render` (the fine-tune's chat template)."""
    if override is not None:
        return Detection(conv=named_template(override), method="override", named=override)
    system_ok = _try_render(render, [{"role": "system", "content": _SYS}, {"role": "user", "content": _U1}], True)
    chats = _sample_chats(with_system=system_ok is not None and _SYS in system_ok)
    expected = []
    for messages, gen in chats:
        text = _try_render(render, messages, gen)
        if text is None:
            raise ConvTemplateError("the chat template failed to render a sample chat",
                                    hint="pass --conv-template NAME")
        expected.append((messages, gen, text))

    generic = derive_generic(render, facts)
    for name, named in NAMED_TEMPLATES.items():
        if _renders_like(named, expected, facts):
            return Detection(conv=_fit_stop_ids(named, generic, facts), method="named", named=name,
                             checked_prompts=len(expected))
    for name, named in NAMED_TEMPLATES.items():
        conv = named.replace(system_message=generic.system_message)
        if _renders_like(conv, expected, facts):
            return Detection(conv=_fit_stop_ids(conv, generic, facts), method="named+system_message", named=name,
                             checked_prompts=len(expected))
    if not _renders_like(generic, expected, facts):
        raise ConvTemplateError("could not express the chat template as an MLC conversation template",
                                hint="pass --conv-template NAME (see `mlc_llm` conversation templates)")
    return Detection(conv=generic, method="generic", checked_prompts=len(expected))


def _fit_stop_ids(conv: Conversation, generic: Conversation, facts: TokenizerFacts) -> Conversation:
    """A copy of a named template whose stop ids fit this vocabulary (else the derived ones)."""
    if _stop_ids_fit(conv, facts):
        return conv.replace()
    return conv.replace(stop_token_ids=_merge_ids(generic.stop_token_ids, conv.stop_str, facts))


def _merge_ids(ids: list[int], stop_str: list[str], facts: TokenizerFacts) -> list[int]:
    out = list(ids)
    for text in stop_str:
        tid = facts.token_to_id(text)
        if tid is not None and tid not in out:
            out.append(tid)
    return out


# -- glue to a transformers tokenizer -------------------------------------------------------------
def tokenizer_facts(tokenizer: Any, eos_token_ids: Sequence[int] = ()) -> TokenizerFacts:
    """TokenizerFacts from a transformers tokenizer (ids outside the vocab map to None)."""
    size = len(tokenizer)

    def id_to_token(tid: int) -> str | None:
        if not 0 <= tid < size:
            return None
        tok = tokenizer.convert_ids_to_tokens(int(tid))
        return tok if isinstance(tok, str) else None

    def token_to_id(text: str) -> int | None:
        tid = tokenizer.convert_tokens_to_ids(text)
        unk = getattr(tokenizer, "unk_token_id", None)
        if tid is None or (tid == unk and text != getattr(tokenizer, "unk_token", None)):
            return None
        return int(tid)

    return TokenizerFacts(
        id_to_token=id_to_token, token_to_id=token_to_id, bos_token=tokenizer.bos_token,
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=[int(i) for i in eos_token_ids],
    )


def tokenizer_render(tokenizer: Any) -> HfRender:
    """The fine-tune's own chat template, rendered by transformers."""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(out, str):
            raise ConvTemplateError("apply_chat_template did not return text")
        return out

    return render
