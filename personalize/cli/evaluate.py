"""eval: rerun the equivalence gate on an artifact and record the numbers."""

from __future__ import annotations

import typer

from registry.store import Registry

from . import app
from .errors import handle_errors, print_json
from .progress import stderr


@app.command("eval")
@handle_errors
def evaluate(target: str = typer.Argument(..., help="registry name or artifact directory"),
             device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
             json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Rerun the equivalence gate (artifact vs the PyTorch reference) and record the numbers."""
    from personalize.evaluate import reevaluate

    result = reevaluate(Registry().resolve(target), device=device, log=None if json_out else stderr.print)
    if json_out:
        print_json(result)
