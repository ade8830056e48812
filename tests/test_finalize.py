"""The last step of an artifact's write, shared by `add` and `personalize eval`: card and lineage."""

from __future__ import annotations

import json

from artifacts.verify import verify_artifact
from personalize.add import add_source
from personalize.finalize import record_eval


def test_recorded_eval_keeps_the_card_whole_and_the_hashes_true(home, tiny_llama, tmp_path):
    art = add_source(tiny_llama, evaluate=False, quantization="q0f32", output=tmp_path / "art").path
    card_before = (art / "README.md").read_text()
    lineage = json.loads((art / "personalize.json").read_text())
    assert "eval" not in lineage
    # numbers of a rerun gate (eval's own computation is tested with the gate, test_adapter_cli)
    result = {"mean_kl": 0.012345, "top1_agreement": 0.875, "perplexity_reference": 11.5,
              "perplexity_artifact": 12.25, "positions": 321}
    record_eval(art, lineage, result)

    card = (art / "README.md").read_text()
    assert card != card_before and "0.01235" in card and "0.875" in card and "321" in card
    # the card is still rendered from the directory: its VRAM estimate is a number, not the placeholder
    vram = [line for line in card.splitlines() if "estimated_vram_bytes" in line]
    assert vram and all(any(ch.isdigit() for ch in line) and "<bytes" not in line for line in vram), vram
    on_disk = json.loads((art / "personalize.json").read_text())
    assert on_disk["eval"] == result
    assert verify_artifact(art) == []  # the card's new hash is in personalize.json
