"""eval: rerun the equivalence gate on an artifact and record the numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from registry.store import Registry

from . import app
from .errors import handle_errors, print_json
from .progress import stderr


def record_eval(path: Path, lineage: dict, result: dict) -> None:
    """Store the numbers in personalize.json and the model card, each file replaced atomically."""
    from artifacts.lineage import hash_file, write_lineage
    from artifacts.model_card import render_model_card

    lineage["eval"] = result
    chat = json.loads((path / "mlc-chat-config.json").read_text())
    card_tmp = path / ".README.md.tmp"
    card_tmp.write_text(render_model_card(lineage, chat, repo_id=lineage.get("repo_id")))
    os.replace(card_tmp, path / "README.md")
    lineage.setdefault("files", {})["README.md"] = {"sha256": hash_file(path / "README.md"),
                                                     "size": (path / "README.md").stat().st_size}
    write_lineage(path, lineage)


@app.command("eval")
@handle_errors
def evaluate(target: str = typer.Argument(..., help="registry name or artifact directory"),
             device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
             json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Rerun the equivalence gate (artifact vs the PyTorch reference) and record the numbers."""
    from artifacts.lineage import read_lineage
    from personalize.evaluate import EquivalenceError, run_gate

    path = Registry().resolve(target)
    lineage = read_lineage(path)
    source = lineage.get("source", {})
    if source.get("kind") == "adapter":
        reference, adapter = Path(lineage["base"]["path"]), Path(source["path"])
    else:
        reference, adapter = Path(source.get("path", "")), None
    for p in (reference, adapter):
        if p is not None and not p.is_dir():
            raise EquivalenceError(f"the reference model is gone: {p}", path=str(p),
                                   hint="eval needs the source (and base) the artifact was made from")
    result = run_gate(path, reference, adapter, lineage["quantization"], device=device,
                      log=None if json_out else stderr.print)
    record_eval(path, lineage, result)
    if json_out:
        print_json(result)
