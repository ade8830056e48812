"""The `personalize` command line (typer). Commands live in small modules that register on `app`."""

from __future__ import annotations

import importlib
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

# Each module registers its commands on `app` (or adds a sub-typer). Missing modules are skipped
# only while the project is being assembled; an import error inside a module is raised.
COMMAND_MODULES = ("convert", "library", "run", "evaluate", "publish")


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise


_register()


def main() -> None:
    app()
