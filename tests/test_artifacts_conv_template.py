"""The chosen MLC conversation template must reproduce the model's own chat template exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.test_artifacts_fixtures import FAMILIES, make_model_dir
from transformers import AutoTokenizer

from artifacts.chat_config import choose_conv_template
from artifacts.conv_detect import tokenizer_facts
from artifacts.conv_template import NAMED_TEMPLATES, named_template
from artifacts.conversation import SYSTEM_PLACEHOLDER, Conversation, prefix_text, prompt_token_ids, render_prompt
from artifacts.errors import ConvTemplateError


ONE_TURN = [{"role": "user", "content": "What is the capital of France?"}]
TWO_TURN = ONE_TURN + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
WITH_SYSTEM = [{"role": "system", "content": "Answer briefly."}] + TWO_TURN
THINKING = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nworld"},
            {"role": "user", "content": "what"}]


# The ids each family's runtime stops at: MLC's own list for the named templates (qwen2, gemma);
# eos ids plus the end-of-turn token for derived ones.
EXPECTED_STOP_IDS = {"llama3": [128001, 128009], "qwen2": [151643, 151645], "mistral": [2], "gemma": [1, 107],
                     "gemma2": [1, 107], "phi3": [32000, 32001, 32007], "qwen3": [151645, 151643]}


def assert_reproduces(model_dir: Path, chats, **kwargs):
    tok = AutoTokenizer.from_pretrained(model_dir)
    det = choose_conv_template(model_dir, tokenizer=tok, **kwargs)
    facts = tokenizer_facts(tok)
    for messages in chats:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = prefix_text(det.conv, facts.id_to_token) + render_prompt(det.conv, messages)
        assert got == want, (messages, got, want)
        # what the runtime tokenizes: BOS as prefix ids, then the text without the tokenizer's own specials
        assert prompt_token_ids(det.conv, messages, tok) == tok.encode(want, add_special_tokens=False)
    return det


def test_smollm2_is_chatml_with_its_own_system_message(smollm2_dir):
    det = assert_reproduces(smollm2_dir, [ONE_TURN, TWO_TURN, WITH_SYSTEM])
    assert det.named == "chatml" and det.conv.name == "chatml"
    assert det.conv.system_message == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert det.conv.stop_token_ids == [2]  # <|im_end|> is id 2 in SmolLM2's vocabulary
    assert det.conv.system_prefix_token_ids is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_families_reproduce_their_template(tmp_path, family):
    model_dir = make_model_dir(tmp_path, family)
    chats = [ONE_TURN, TWO_TURN]
    det = assert_reproduces(model_dir, chats)
    eos = FAMILIES[family]["eos_ids"]
    eos = eos if isinstance(eos, list) else [eos]
    # named or derived, the runtime must stop at every eos id, and at nothing that is neither an eos
    # id nor one of the template's stop strings in this vocabulary
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert set(eos) <= set(det.conv.stop_token_ids)
    for tid in det.conv.stop_token_ids:
        assert tid in eos or tok.convert_ids_to_tokens(tid) in det.conv.stop_str, (family, tid)
    assert det.conv.stop_token_ids == EXPECTED_STOP_IDS[family]
    if family == "qwen2":
        # Qwen2's template is MLC's qwen2 verbatim (system message and stop ids included)
        assert det.method == "named" and det.conv == named_template("qwen2")
        assert_reproduces(model_dir, [WITH_SYSTEM])
    if family in ("gemma", "gemma2"):
        assert det.method == "named" and det.conv == named_template("gemma_instruction")
    if family in ("phi3", "qwen3"):
        # no default system message (MLC's phi-3 and qwen3 add one): rendered faithfully instead
        assert det.method == "generic" and det.conv.system_message == ""
    if family == "qwen3":  # earlier turns' <think> blocks dropped, as Qwen3's template and MLC's qwen3 do
        assert det.conv.strip_reasoning_in_history
        assert_reproduces(model_dir, [THINKING])
    if family == "llama3":
        # no default system message, so MLC's llama-3 (which has one) must not be claimed
        assert det.method == "generic" and det.conv.system_prefix_token_ids == [128000]
        assert det.conv.stop_str == ["<|eot_id|>"]
    if family == "mistral":
        assert det.method == "generic" and det.conv.system_prefix_token_ids == [1]
        assert det.conv.stop_str == ["</s>"]


def test_template_in_tokenizer_config(tmp_path):
    model_dir = make_model_dir(tmp_path, "qwen2", template_in_tokenizer_config=True)
    assert not (model_dir / "chat_template.jinja").exists()
    det = assert_reproduces(model_dir, [ONE_TURN, TWO_TURN])
    assert det.named == "qwen2"


def test_override_by_name(tmp_path):
    model_dir = make_model_dir(tmp_path, "mistral")
    det = choose_conv_template(model_dir, conv_template="llama-2")
    assert det.method == "override" and det.conv == NAMED_TEMPLATES["llama-2"]
    with pytest.raises(ConvTemplateError):
        choose_conv_template(model_dir, conv_template="no-such-template")


def test_render_prompt_follows_mlc_rules():
    conv = named_template("llama-2")
    # add_role_after_system_message=False: the first user turn follows the system block directly
    out = render_prompt(conv, [{"role": "user", "content": "hi"}])
    assert out == "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nhi [/INST] "
    two_seps = render_prompt(conv, TWO_TURN[:2], add_generation_prompt=False)
    assert two_seps.endswith("Paris. </s>")
    qwen3 = named_template("qwen3")
    hist = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>\n\nb"},
            {"role": "user", "content": "c"}]
    assert "<think>" not in render_prompt(qwen3, hist)
    assert SYSTEM_PLACEHOLDER not in render_prompt(named_template("chatml"), ONE_TURN)


def test_conversation_json_is_mlc_field_order_and_round_trips():
    conv = named_template("llama-3")
    doc = conv.to_json()
    assert list(doc) == ["name", "system_template", "system_message", "system_prefix_token_ids",
                         "add_role_after_system_message", "roles", "role_templates", "messages", "seps",
                         "role_content_sep", "role_empty_sep", "stop_str", "stop_token_ids",
                         "strip_reasoning_in_history", "function_string", "use_function_calling"]
    assert Conversation.from_json(doc) == conv
    doc["stop_token_ids"].append(1)
    assert conv.stop_token_ids == [128001, 128009]  # to_json hands out a copy
    with pytest.raises(ConvTemplateError):
        Conversation.from_json({**doc, "seps": []})


def test_named_templates_are_independent_copies():
    conv = named_template("chatml")
    conv.stop_token_ids.append(99)
    assert named_template("chatml").stop_token_ids == [2] == NAMED_TEMPLATES["chatml"].stop_token_ids
