"""batch: many variants of one base from a manifest (personalize/batch/)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from .errors import handle_errors, print_json
from .progress import stderr

# Exit codes: 0 every variant delivered (and pushed where asked); 1 some variant failed (the others
# landed; the table and --json say which; run again to retry only those); 2 the manifest or the base
# is unusable (nothing ran); 130 interrupted (finished variants are kept; run again to finish).
EXIT_VARIANT_FAILED = 1
EXIT_INTERRUPTED = 130


class RichDisplay:
    """One line per variant (status, bytes converted) and an overall bar, on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.tasks: dict[int, Any] = {}
        self.overall = None
        self.lock = threading.Lock()

    def __enter__(self) -> "RichDisplay":
        if self.enabled:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), TextColumn("{task.fields[status]}"),
                                     BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=stderr)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress else stderr).print(message)

    def planned(self, outcomes) -> None:
        if self.progress is None:
            return
        self.overall = self.progress.add_task("[bold]all variants", total=len(outcomes), status="", start=True)
        for o in outcomes:
            status = "[dim]already delivered" if o.status == "skipped" else "[dim]queued"
            self.tasks[o.index] = self.progress.add_task(o.name, total=None, status=status, start=False)

    def event(self, o, kind: str, value) -> None:
        if self.progress is None:
            return
        task = self.tasks[o.index]
        with self.lock:
            if kind == "stage":
                self.progress.start_task(task)
                self.progress.update(task, status=f"[cyan]{'running' if value == 'start' else value}")
            elif kind == "total":
                self.progress.update(task, total=int(value), completed=0)
            elif kind == "advance":
                self.progress.update(task, advance=int(value))

    def finished(self, o) -> None:
        if self.progress is None:
            return
        task = self.tasks[o.index]
        with self.lock:
            if o.ok:
                pushed = (o.push or {}).get("status")
                text = {"skipped": "[green]already delivered"}.get(o.status, "[green]delivered")
                if pushed:
                    text += f", {pushed}"
            else:
                text = f"[red]failed at {o.stage}"
            self.progress.start_task(task)
            total = self.progress.tasks[task].total
            self.progress.update(task, status=text, completed=total or 0)
            self.progress.stop_task(task)
            self.progress.advance(self.overall)


@app.command()
@handle_errors
def batch(
    manifest: Path = typer.Argument(..., help="YAML or JSON manifest: base, quantization(s), variants"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="worker processes (default: CPU count), "
                                       "capped so the workers fit in available memory"),
    ray: bool = typer.Option(False, "--ray", help="run the jobs on Ray (a local cluster unless --ray-address)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="join this Ray cluster ('auto', "
                                              "HOST:PORT, ray://...); implies --ray"),
    out: Optional[Path] = typer.Option(None, "--out", help="where app-config.json and mlc-package-config.json "
                                       "go (default: <manifest>.batch/ next to the manifest)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress display"),
) -> None:
    """Convert many variants of one base from a manifest: base work once, resumable, in parallel."""
    from personalize.batch import read_manifest, run_batch

    doc = read_manifest(manifest)
    if json_out:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    interrupted = False
    with RichDisplay(enabled=not (quiet or json_out)) as display:
        report = run_batch(doc, jobs=jobs, ray=ray or ray_address is not None, ray_address=ray_address,
                           out_dir=out, display=display)
        interrupted = report.interrupted
    if json_out:
        print_json(report.to_json())
    else:
        _print_table(report)
    if interrupted:
        stderr.print("interrupted: finished variants are kept; run the same command again to finish the rest")
        raise typer.Exit(EXIT_INTERRUPTED)
    if report.failed:
        raise typer.Exit(EXIT_VARIANT_FAILED)


def _print_table(report) -> None:
    from rich.table import Table

    table = Table("name", "status", "size", "gate KL / top-1", "time", "push", title=f"batch: {report.executor}")
    for o in report.outcomes:
        row = o.to_json()
        ev = row["gate"]
        gate = f"{ev['mean_kl']:.3g} / {ev['top1_agreement']:.3f}" if ev else "-"
        status = {"delivered": "[green]delivered", "skipped": "[green]already delivered"}.get(
            row["status"], f"[red]{row['status']}" + (f" ({row['stage']})" if row["stage"] else ""))
        push = (o.push or {}).get("status", "-") if o.push_repo else "-"
        table.add_row(o.name, status, _size(o.size_bytes), gate,
                      f"{o.seconds:.1f} s" if o.seconds else "-", push)
    stderr.print(table)
    for o in report.failed:
        stderr.print(f"[red]{o.name}[/red]: {o.error}", soft_wrap=True)  # one greppable line per failure
    counts = report.to_json()["counts"]
    stderr.print(f"{counts['delivered']} delivered, {counts['skipped']} already delivered, {counts['failed']} failed "
                 f"in {report.wall_s:.1f} s ({report.workers_note}); log {report.log}", soft_wrap=True)
    if report.outputs.get("variants"):
        stderr.print(f"WebLLM appConfig: {report.outputs['app_config']}; "
                     f"mlc-package-config.json: {report.outputs['mlc_package_config']}", soft_wrap=True)


def _size(n: int) -> str:
    if not n:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
