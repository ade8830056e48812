"""lib build, lib list: the compiled model libraries."""

from __future__ import annotations

import typer

from . import app
from .errors import handle_errors, print_json
from .progress import stderr

lib_app = typer.Typer(help="Compiled model libraries (one per base model shape + quantization + target).",
                      no_args_is_help=True)
app.add_typer(lib_app, name="lib")


@lib_app.command("build")
@handle_errors
def build(
    artifact: str = typer.Argument(..., help="registry name or artifact directory"),
    target: str = typer.Option("llvm", "--target", help="llvm (CPU) or cuda"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Compile (or find in the cache) the library an artifact runs on."""
    from artifacts import Artifact
    from personalize.library import ensure_library, library_config_from_chat_config
    from registry.store import Registry

    art = Artifact(Registry().resolve(artifact))
    chat_config = art.chat_config
    config = library_config_from_chat_config(chat_config, str(art.chat_config_path))
    lib = ensure_library(config, chat_config["quantization"], target,
                         log=(lambda m: None) if json_out else (lambda m: stderr.print(m)))
    doc = {"path": str(lib.path), "built": lib.built, "library_key": lib.metadata["library_key"],
           "model_type": lib.metadata["model_type"], "quantization": lib.metadata["quantization"],
           "target": target, "tvm": lib.metadata["tvm"]}
    if json_out:
        print_json(doc)
    else:
        typer.echo(str(lib.path))


@lib_app.command("list")
@handle_errors
def list_libs(json_out: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """List the cached libraries."""
    from personalize.library import libs_dir, list_libraries

    libs = list_libraries()
    if json_out:
        print_json({"libs_dir": str(libs_dir()), "libraries": libs})
        return
    if not libs:
        stderr.print(f"no libraries in {libs_dir()}")
        return
    for lib in libs:
        typer.echo(f"{lib['model_type']:8} {lib['quantization']:9} {lib['target']:5} {lib['library_key']}  "
                   f"{lib['bytes'] / 1e6:6.1f} MB  {lib['path']}")
