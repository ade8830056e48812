"""mlc-chat-config.json: MLC's field set and order, values taken as gen_config takes them."""

from __future__ import annotations

import json

import pytest
from tests.test_artifacts_fixtures import make_model_dir

from artifacts.chat_config import build_chat_config, detect_tokenizer_info, read_chat_config, write_chat_config
from artifacts.errors import ChatConfigError


# MLCChatConfig's declared field order (mlc_llm/protocol/mlc_chat_config.py)
MLC_FIELDS = [
    "version", "model_type", "quantization", "model_config", "vocab_size", "context_window_size",
    "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards",
    "pipeline_parallel_stages", "active_vocab_size", "temperature", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "top_p", "tokenizer_files", "tokenizer_info", "conv_template", "pad_token_id",
    "bos_token_id", "eos_token_id", "model_task", "embedding_metadata",
]  # fmt: skip
CONV_FIELDS = [
    "name", "system_template", "system_message", "system_prefix_token_ids", "add_role_after_system_message",
    "roles", "role_templates", "messages", "seps", "role_content_sep", "role_empty_sep", "stop_str",
    "stop_token_ids", "strip_reasoning_in_history", "function_string", "use_function_calling",
]  # fmt: skip


def tiny_model_config(vocab: int) -> dict:
    return {"hidden_size": 64, "vocab_size": vocab, "context_window_size": 2048, "prefill_chunk_size": 2048,
            "tensor_parallel_shards": 1, "pipeline_parallel_stages": 1, "max_batch_size": 1}


def test_smollm2_chat_config(tmp_path, smollm2_dir):
    from personalize.arch import get_architecture

    hf = json.loads((smollm2_dir / "config.json").read_text())
    model_config = get_architecture("llama").library_config(hf).model_config
    doc, files = build_chat_config(model_type="llama", quantization="q4f16_1", model_config=model_config,
                                   source_dir=smollm2_dir)
    assert list(doc) == MLC_FIELDS
    assert list(doc["conv_template"]) == CONV_FIELDS
    assert doc["version"] == "0.1.0" and doc["model_type"] == "llama" and doc["quantization"] == "q4f16_1"
    assert doc["model_config"] == model_config
    assert doc["vocab_size"] == 49152 and doc["active_vocab_size"] == 49152
    assert doc["context_window_size"] == 8192 and doc["sliding_window_size"] == -1
    assert doc["attention_sink_size"] == -1 and doc["prefill_chunk_size"] == 8192
    # generation_config.json: bos 1, eos 2, pad 2; nothing sets the sampling values -> system defaults
    assert (doc["pad_token_id"], doc["bos_token_id"], doc["eos_token_id"]) == (2, 1, 2)
    assert doc["temperature"] == 1.0 and doc["top_p"] == 1.0 and doc["repetition_penalty"] == 1.0
    assert doc["presence_penalty"] == 0.0 and doc["frequency_penalty"] == 0.0
    assert doc["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]
    assert doc["tokenizer_info"] == {"token_postproc_method": "byte_level", "prepend_space_in_encode": False,
                                     "strip_space_in_decode": False}
    assert doc["conv_template"]["name"] == "chatml"
    assert doc["model_task"] == "chat" and doc["embedding_metadata"] is None
    assert [p.name for p in files] == ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]

    write_chat_config(tmp_path, doc)
    text = (tmp_path / "mlc-chat-config.json").read_text()
    assert text == json.dumps(doc, indent=2) and not text.endswith("\n")
    assert read_chat_config(tmp_path) == doc


def test_generation_values_first_from_generation_config_then_config(tmp_path):
    model_dir = make_model_dir(tmp_path, "mistral")
    gen = json.loads((model_dir / "generation_config.json").read_text())
    gen["temperature"] = None  # null does not count as set: config.json's 0.3 wins
    gen["repetition_penalty"] = 1  # raw value kept as written (MLC does not coerce)
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    doc, _ = build_chat_config(model_type="mistral", quantization="q0f16", model_config=tiny_model_config(20),
                               source_dir=model_dir)
    assert doc["top_p"] == 0.9 and doc["temperature"] == 0.3 and doc["repetition_penalty"] == 1
    assert isinstance(doc["repetition_penalty"], int)
    assert doc["eos_token_id"] == 2 and doc["bos_token_id"] == 1 and doc["pad_token_id"] == 0
    assert doc["conv_template"]["stop_token_ids"] == [2]


def test_tokenizer_info_detection(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                           {"type": "Replace"}]},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"},
                                                     {"type": "Fuse"}, {"type": "Strip", "content": " ",
                                                                        "start": 1, "stop": 0}]},
    }))
    assert detect_tokenizer_info(path) == {"token_postproc_method": "byte_fallback",
                                           "prepend_space_in_encode": True, "strip_space_in_decode": True}
    path.write_text(json.dumps({"decoder": {"type": "ByteLevel"}}))
    assert detect_tokenizer_info(path)["token_postproc_method"] == "byte_level"
    assert detect_tokenizer_info(tmp_path / "missing.json")["token_postproc_method"] == "byte_fallback"


def test_duplicated_added_tokens_refused(tmp_path):
    model_dir = make_model_dir(tmp_path, "gemma")
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    tj["added_tokens"].append(dict(tj["added_tokens"][0]))
    (model_dir / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ChatConfigError, match="twice"):
        build_chat_config(model_type="gemma", quantization="q0f16", model_config=tiny_model_config(120),
                          source_dir=model_dir)


def test_no_tokenizer_falls_back_to_plain_text_template(tmp_path):
    src = tmp_path / "bare"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "bos_token_id": 5, "eos_token_id": [6, 7]}))
    doc, files = build_chat_config(model_type="llama", quantization="q0f16", model_config=tiny_model_config(32),
                                   source_dir=src)
    assert files == [] and doc["tokenizer_files"] == []
    conv = doc["conv_template"]
    assert conv["name"] == "LM" and conv["system_prefix_token_ids"] == [5] and conv["stop_token_ids"] == [6, 7]
    assert doc["tokenizer_info"]["token_postproc_method"] == "byte_fallback"
    assert doc["active_vocab_size"] == 32
