"""A real artifact (`add` of a tiny llama) pushed to the local Hub stand-in (tests/hub_stub.py, not the
real Hub), pulled back with huggingface_hub and verified, then shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from publish import hub as hubmod
from publish.share import share_records
from tests.hub_env import clean_hf_env  # noqa: F401 - fixture
from tests.hub_stub import HubStub, hash_tree

TOKEN = "hf_e2eTOKEN"
pytestmark = pytest.mark.usefixtures("clean_hf_env")


@pytest.fixture
def hub():
    with HubStub(tokens={TOKEN: "alice"}) as stub:
        yield stub


def test_real_artifact_round_trip(hub, home, tiny_llama, tmp_path):
    from artifacts.verify import verify_artifact
    from huggingface_hub import snapshot_download

    from personalize.add import add_source

    art = add_source(str(tiny_llama), quantization="q4f16_1", name="tiny", evaluate=False).path
    before = hash_tree(art)
    result = hubmod.push_artifact(art, "alice/tiny-q4f16_1-MLC", token=TOKEN, endpoint=hub.url)
    assert hash_tree(art) == before
    assert result.commit and "personalize.json" in result.uploaded
    card = hub.file_bytes("alice/tiny-q4f16_1-MLC", "README.md").decode()
    assert "HF://alice/tiny-q4f16_1-MLC" in card  # the card was re-rendered for the repo

    local = Path(snapshot_download("alice/tiny-q4f16_1-MLC", endpoint=hub.url, cache_dir=tmp_path, token=TOKEN))
    assert [p for p in verify_artifact(local) if p.path != ".gitattributes"] == []
    for rel in json.loads((art / "personalize.json").read_text())["files"]:
        if rel != "README.md":
            assert (local / rel).read_bytes() == (art / rel).read_bytes(), rel

    again = hubmod.push_artifact(art, "alice/tiny-q4f16_1-MLC", token=TOKEN, endpoint=hub.url)
    assert again.commit is None and again.uploaded == []

    doc = share_records(art, name="tiny", repo_id="alice/tiny-q4f16_1-MLC")
    lineage = json.loads((art / "personalize.json").read_text())
    entry = doc["mlc_package_config"]["iphone"]["model_list"][0]
    assert entry["model_lib"] == f"llama_q4f16_1_{lineage['library_key']}"
    assert entry["estimated_vram_bytes"] > doc["vram"]["parameters"] > 0
