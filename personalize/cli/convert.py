"""add, list, show, rm, verify."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from registry.store import Registry

from . import app
from .errors import handle_errors, print_json
from .progress import byte_progress, stderr


@app.command()
@handle_errors
def add(
    source: str = typer.Argument(..., help="HF model dir, PEFT adapter dir, or hf://ORG/NAME[@REVISION]"),
    quantization: str = typer.Option("q4f16_1", "--quantization", "-q", help="q0f32 q0f16 q0bf16 q4f16_1 "
                                     "q4f32_1 q4bf16_1 q3f16_1 q4f16_0 ..."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="registry name (default: <dir>-<quantization>)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the artifact to this directory "
                                          "instead of the registry"),
    base: Optional[str] = typer.Option(None, "--base", help="base model for an adapter: registry name or HF dir"),
    force_base: bool = typer.Option(False, "--force-base", help="accept a --base whose config differs from "
                                    "the adapter's recorded base"),
    conv_template: Optional[str] = typer.Option(None, "--conv-template", help="MLC conversation template name "
                                                "(default: derived from the model's chat_template)"),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact of the same name"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the equivalence gate"),
    device: str = typer.Option("cpu", "--device", help="device for the equivalence gate: cpu or cuda"),
    scales: str = typer.Option("mlc", "--scales", help="per-group scales, same format and library: mlc "
                               "(bit-exact with MLC's converter), range (also uses the top 4-bit code: measured "
                               "lower KL and perplexity on SmolLM2), mse (experimental: least squared weight "
                               "error, measured worse on SmolLM2)"),
    lib: Optional[str] = typer.Option(None, "--lib", help="compiled MLC library (file or https URL) the artifact "
                                      "must run on: its limits are used and the result is checked against it"),
    context_window: Optional[int] = typer.Option(None, "--context-window", help="context_window_size for "
                                                 "mlc-chat-config.json (default: the prebuilt library's, e.g. 4096)"),
    prefill_chunk: Optional[int] = typer.Option(None, "--prefill-chunk", help="prefill_chunk_size (default: the "
                                                "prebuilt library's, e.g. 1024)"),
    calibrate: Optional[str] = typer.Option(None, "--calibrate", metavar="builtin|FILE",
                                            help="calibrated rounding (GPTQ-style, same format and library, "
                                            "not byte-identical with MLC's converter): `builtin` text or a "
                                            "UTF-8 file (for a chat fine-tune, text in its chat format is best)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Convert a fine-tune or adapter into a verified MLC artifact."""
    from personalize.add import add_source
    from personalize.calibration import three_bit_warning

    warning = three_bit_warning(quantization, calibrated=calibrate is not None)
    if warning and not json_out:
        stderr.print(f"[yellow]warning:[/yellow] {warning}")

    with byte_progress("converting", enabled=not (quiet or json_out)) as (set_total, advance):
        result = add_source(source, quantization=quantization, name=name, output=output, base=base,
                            force_base=force_base, conv_template=conv_template, force=force,
                            evaluate=not no_eval, device=device, progress=advance, progress_total=set_total,
                            log=None if json_out else stderr.print, scales=scales, lib=lib,
                            context_window=context_window, prefill_chunk=prefill_chunk, calibrate=calibrate)
    doc = {"name": result.name, "path": str(result.path), "library_key": result.lineage["library_key"],
           "quantization": result.lineage["quantization"],
           "quantization_options": result.lineage.get("quantization_options"),
           "timings": result.lineage.get("timings"),
           "prebuilt_library": result.lineage.get("prebuilt_library"),
           "eval": result.lineage.get("eval")}
    if json_out:
        print_json(doc)
    else:
        label = result.name or str(result.path)
        stderr.print(f"[green]added[/green] {label}  ({result.lineage['quantization']}, library "
                     f"{result.lineage['library_key']}, {result.lineage['timings']['total']:.1f} s)")
        prebuilt = result.lineage.get("prebuilt_library") or {}
        if prebuilt.get("library"):
            typer.echo(f"runs on MLC's prebuilt {prebuilt['library']} (@mlc-ai/web-llm {prebuilt['webllm_range']}; "
                       f"context {prebuilt['context_window_size']}, prefill chunk {prebuilt['prefill_chunk_size']})",
                       err=True)
        elif prebuilt.get("reason"):
            typer.echo(f"note: {prebuilt['reason']}", err=True)  # once, unwrapped
        typer.echo(str(result.path))


@app.command("list")
@handle_errors
def list_artifacts(json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """List the artifacts in the registry."""
    rows = [e.summary() for e in Registry().entries()]
    if json_out:
        print_json(rows)
        return
    if not rows:
        stderr.print("no artifacts yet: `personalize add ./my-finetune`")
        return
    from rich.table import Table

    table = Table("name", "type", "quant", "library", "size", "source")
    for r in rows:
        table.add_row(r["name"], str(r["model_type"]), str(r["quantization"]), str(r["library_key"]),
                      f"{r['size_bytes'] / 2**20:.1f} MiB", str(r["source"]))
    from rich.console import Console

    Console().print(table)


@app.command()
@handle_errors
def show(target: str = typer.Argument(..., help="registry name or artifact directory"),
         json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Show an artifact's lineage, library key and files."""
    from artifacts.lineage import read_lineage

    path = Registry().resolve(target)
    lineage = read_lineage(path)
    doc = dict(lineage)
    doc["path"] = str(path)
    if json_out:
        print_json(doc)
        return
    size = sum(int(f["size"]) for f in lineage.get("files", {}).values())
    src = lineage.get("source", {})
    lines = [f"[bold]{lineage.get('name') or path.name}[/bold]  {path}",
             f"  model_type    {lineage.get('model_type')}", f"  quantization  {lineage.get('quantization')}",
             f"  library_key   {lineage.get('library_key')}", f"  source        {src.get('kind')}: {src.get('path')}",
             f"  size          {size / 2**20:.1f} MiB in {len(lineage.get('files', {}))} files"]
    if lineage.get("base"):
        lines.append(f"  base          {lineage['base'].get('path') or lineage['base'].get('name')}")
    if lineage.get("eval"):
        ev = lineage["eval"]
        lines.append(f"  eval          mean KL {ev.get('mean_kl', float('nan')):.4g}, top-1 "
                     f"{ev.get('top1_agreement', float('nan')):.3f}, perplexity "
                     f"{ev.get('perplexity_reference', float('nan')):.2f} -> "
                     f"{ev.get('perplexity_artifact', float('nan')):.2f} (reference -> artifact)")
    for line in lines:
        stderr.print(line)


@app.command()
@handle_errors
def rm(name: str = typer.Argument(..., help="registry name")) -> None:
    """Remove an artifact from the registry."""
    path = Registry().remove(name)  # also drops its push record and its dead writers' partial dirs
    stderr.print(f"removed {name} ({path})")


@app.command()
@handle_errors
def verify(target: str = typer.Argument(..., help="registry name or artifact directory"),
           json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Re-hash every file and check tensor-cache.json against the shards. Exit 1 on any difference."""
    from artifacts.verify import verify_artifact

    path = Registry().resolve(target)
    problems = verify_artifact(path)
    doc = {"path": str(path), "ok": not problems,
           "problems": [{"path": str(p.path), "message": p.message} for p in problems]}
    if json_out:
        print_json(doc)
    elif problems:
        for p in problems:
            typer.echo(f"{p.path}: {p.message}", err=True)
    else:
        stderr.print(f"[green]ok[/green] {path}: every file matches personalize.json")
    if problems:
        raise typer.Exit(1)


