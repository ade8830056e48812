"""The `personalize` command line (typer). Commands live in small modules that register on `app`."""

from __future__ import annotations

import os

# Before torch loads: OpenMP threads that busy-wait on a loaded core make torch ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

app = typer.Typer(
    name="personalize",
    help="Turn Hugging Face fine-tunes and LoRA adapters into MLC LLM artifacts that run on an "
    "already-compiled model library.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands on `app` (or adds a sub-typer) when imported.
from . import check, convert, evaluate, library, publish, run  # noqa: E402,F401
from . import batch  # noqa: E402,F401


def main() -> None:
    app()
