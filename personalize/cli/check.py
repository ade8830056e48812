"""check: does an artifact run on a compiled MLC library?"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from registry.store import Registry

from . import app
from .errors import handle_errors, print_json
from .progress import stderr


@app.command()
@handle_errors
def check(
    target: str = typer.Argument(..., help="registry name or artifact directory"),
    lib: str = typer.Option(..., "--lib", help="compiled MLC model library: .wasm, .so, .dylib, .tar, or an https URL"),
    base_config: Optional[Path] = typer.Option(None, "--base-config", help="config.json of the model the library "
                                               "was compiled from (default: the catalog of MLC's prebuilt libraries)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Compare an artifact with a compiled MLC library: parameters, shapes, dtypes, limits and the
    compiled-in RoPE/eps/tying. Exit 0 when it will run, 1 listing every mismatch."""
    from personalize.check_lib import check_library

    path = Registry().resolve(target)
    result = check_library(path, lib, base_config)
    if json_out:
        print_json({"artifact": str(path), **result.to_json()})
    else:
        for m in result.mismatches:
            typer.echo(f"mismatch {m.field}: {m.message}", err=True)
        for note in result.notes:
            stderr.print(f"[yellow]note[/yellow] {note}")
        ref = result.reference or {}
        where = ref.get("base_model") or ref.get("path") or ref.get("source") or "unchecked"
        if result.ok:
            stderr.print(f"[green]ok[/green] {path} runs on {lib} ({len(result.metadata.get('params', []))} "
                         f"parameters; compiled-in values checked against {where})")
        else:
            stderr.print(f"[red]{len(result.mismatches)} mismatch(es)[/red]: {path} will not run on {lib}")
    if not result.ok:
        raise typer.Exit(1)
