"""artifacts.Artifact, the one reader of an artifact directory: each file parsed by one rule, one typed
error naming the file, legacy directories (no personalize.json) readable."""

from __future__ import annotations

import json

import pytest

from artifacts import Artifact, Conversation
from artifacts.errors import ArtifactError, ChatConfigError, ConvTemplateError, LineageError
from tests.hub_stub import CHATML, make_fake_artifact


@pytest.fixture
def art(tmp_path):
    return make_fake_artifact(tmp_path / "tiny")


def test_reads_every_part(art):
    a = Artifact(art)
    assert a.chat_config["model_type"] == "llama" and a.lineage["library_key"] == "0123456789abcdef"
    assert a.conversation == Conversation.from_json(CHATML) and a.conversation.stop_token_ids == [2]
    assert len(a.tensor_cache) == 1 + 2 * 6 + 1
    assert set(a.files) == {p.name for p in art.iterdir()} - {"personalize.json"}
    assert a.sha256("tokenizer.json") == a.files["tokenizer.json"]["sha256"]
    assert a.vram().total > a.tensor_cache.param_bytes > 0


def test_revision_follows_the_lineage(art):
    before = Artifact(art).revision
    doc = json.loads((art / "personalize.json").read_text())
    doc["name"] = "renamed"
    (art / "personalize.json").write_text(json.dumps(doc))
    assert Artifact(art).revision != before


def test_legacy_directory_without_lineage(art):
    (art / "personalize.json").unlink()
    a = Artifact(art)
    assert a.lineage_or_none() is None
    assert a.chat_config["quantization"] == "q0f16"  # the rest still reads
    with pytest.raises(LineageError) as err:
        a.lineage
    assert str(err.value.path).endswith("personalize.json")


@pytest.mark.parametrize("text, error, needle", [
    ("{not json", ChatConfigError, "not valid JSON"),
    ("[]", ChatConfigError, "not a JSON object"),
    ('{"quantization": "q0f16"}', ChatConfigError, "no model_type"),
    ('{"model_type": "llama", "quantization": "q0f16", "conv_template": "chatml"}', ChatConfigError,
     "not a conversation object"),
])
def test_chat_config_errors_are_typed_and_name_the_file(art, text, error, needle):
    (art / "mlc-chat-config.json").write_text(text)
    with pytest.raises(error, match=needle) as err:
        Artifact(art).chat_config
    assert str(err.value.path).endswith("mlc-chat-config.json")


def test_malformed_conversation_is_a_typed_error(art):
    doc = json.loads((art / "mlc-chat-config.json").read_text())
    doc["conv_template"]["seps"] = []
    (art / "mlc-chat-config.json").write_text(json.dumps(doc))
    with pytest.raises(ConvTemplateError, match="seps") as err:
        Artifact(art).conversation
    assert str(err.value.path).endswith("mlc-chat-config.json")


def test_not_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no artifact directory"):
        Artifact(tmp_path / "missing")
