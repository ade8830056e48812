"""Rich progress bars on stderr (stdout stays clean for --json)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

stderr = Console(stderr=True)


@contextmanager
def byte_progress(description: str, enabled: bool = True) -> Iterator[tuple]:
    """Yield (set_total, advance) callbacks for a bytes/s bar."""
    if not enabled:
        yield (lambda total: None), (lambda n, what="": None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[what]}"),
                        console=stderr, transient=False)
    with progress:
        task = progress.add_task(description, total=None, what="")

        def set_total(total: int) -> None:
            progress.update(task, total=total)

        def advance(n: int, what: str = "") -> None:
            short = what if len(what) <= 40 else "…" + what[-39:]
            progress.update(task, advance=n, what=short)

        yield set_total, advance
