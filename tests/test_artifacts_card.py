"""The model card keeps its numbers wherever it is rendered (add, push, eval) and claims bit-exactness with
`mlc_llm convert_weight` only when it is true (MLC's own scales). Review §3 bugs 1-2, issue 11 item 8.

The VRAM number is checked against an estimate computed here from the artifact's files (weights from
tensor-cache.json, KV cache from the config), not against the product's deploy.estimate_vram.
"""

from __future__ import annotations

import json
import math

import pytest

from artifacts import Artifact
from publish import hub as hubmod
from tests.hub_env import clean_hf_env  # noqa: F401 - fixture
from tests.hub_stub import HubStub, make_fake_artifact

TOKEN = "hf_cardTOKEN"
ITEMSIZE = {"float16": 2, "float32": 4, "bfloat16": 2, "uint32": 4}


def app_entry(card: str) -> dict:
    """The iOS/Android mlc-package-config entry: the one ```json block of the card."""
    blocks = [b.split("```")[0] for b in card.split("```json\n")[1:]]
    assert len(blocks) == 1, card
    return json.loads(blocks[0])


def lower_bound_vram(artifact) -> int:
    """Weights on the device + the fp16 KV cache of the full context: the estimate must cover both."""
    cache = json.loads((artifact / "tensor-cache.json").read_text())
    weights = sum(math.prod(r["shape"]) * ITEMSIZE[r["dtype"]] for s in cache["records"] for r in s["records"])
    chat = json.loads((artifact / "mlc-chat-config.json").read_text())
    mc = chat["model_config"]
    kv = mc["num_hidden_layers"] * 2 * mc["num_key_value_heads"] * mc["head_dim"] * chat["context_window_size"] * 2
    return weights + kv


def assert_numeric_vram(card: str, artifact) -> None:
    vram = app_entry(card)["estimated_vram_bytes"]
    assert isinstance(vram, int), f"the card lost its VRAM estimate: {vram!r}"
    assert lower_bound_vram(artifact) < vram < 2 * lower_bound_vram(artifact) + 2**20


@pytest.fixture
def hub():
    with HubStub(tokens={TOKEN: "alice"}) as stub:
        yield stub


@pytest.mark.usefixtures("clean_hf_env")
def test_pushed_card_keeps_the_vram_estimate(hub, tmp_path):
    art = make_fake_artifact(tmp_path / "tiny")
    hubmod.push_artifact(art, "alice/tiny", token=TOKEN, endpoint=hub.url)
    card = hub.file_bytes("alice/tiny", "README.md").decode()
    assert "mlc_llm chat HF://alice/tiny" in card  # re-rendered for the repo...
    assert_numeric_vram(card, art)  # ...from the directory, so the estimate survives


def test_card_after_eval_keeps_the_vram_estimate(tmp_path):
    art = make_fake_artifact(tmp_path / "tiny")
    artifact = Artifact(art)
    artifact.record({**artifact.lineage, "eval": {"mean_kl": 0.004, "top1_agreement": 0.9375, "positions": 64}})
    card = (art / "README.md").read_text()
    assert "| top-1 agreement | 0.938 |" in card
    assert_numeric_vram(card, art)
    lineage = Artifact(art).lineage
    assert lineage["eval"]["top1_agreement"] == 0.9375
    assert lineage["files"]["README.md"]["size"] == len(card.encode())


@pytest.mark.parametrize("scales", ["mlc", "range", "mse"])
def test_bit_exact_claim_only_for_mlc_scales(tmp_path, scales):
    art = make_fake_artifact(tmp_path / "tiny")
    lineage = {**Artifact(art).lineage, "quantization_options": {"scales": scales}}
    card = Artifact(art).render_card(lineage=lineage)
    claims = "bit-exact with `mlc_llm convert_weight`" in card or "byte-identical with `mlc_llm" in card
    assert claims == (scales == "mlc"), card
    if scales != "mlc":
        assert "the bytes differ from `mlc_llm convert_weight`" in card
