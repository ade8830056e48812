"""generate, chat: run an artifact on its library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import app
from .errors import handle_errors
from .progress import stderr


def _load(artifact: str, device: str, lib: Optional[Path]):
    import personalize

    return personalize.load(artifact, device=device, lib=lib, log=lambda m: stderr.print(m))


@app.command()
@handle_errors
def generate(
    artifact: str = typer.Argument(..., help="registry name or artifact directory"),
    prompt: str = typer.Argument(..., help="the user message"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    lib: Optional[Path] = typer.Option(None, "--lib", help="a compiled library (default: the cached one, "
                                       "built if missing)"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stats: bool = typer.Option(False, "--stats", help="print token counts and speed on stderr"),
) -> None:
    """Reply to PROMPT with the artifact's chat template; streams to stdout."""
    model = _load(artifact, device, lib)
    info: dict = {}
    for delta in model.stream_chat([{"role": "user", "content": prompt}], max_tokens, temperature, top_p,
                                   seed, info):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if stats:
        n, dt = info.get("decode_tokens", 0), info.get("decode_s", 0.0)
        stderr.print(f"prompt {info.get('prompt_tokens')} tok in {info.get('prefill_s', 0):.3f}s; "
                     f"generated {n} tok at {n / dt if dt else 0:.1f} tok/s ({info.get('finish_reason')})")


@app.command()
@handle_errors
def chat(
    artifact: str = typer.Argument(..., help="registry name or artifact directory"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    device: str = typer.Option("cpu", "--device"),
    lib: Optional[Path] = typer.Option(None, "--lib"),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
) -> None:
    """Interactive chat (streaming). Empty line or Ctrl-D ends it; /reset starts over."""
    model = _load(artifact, device, lib)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line})
        reply = []
        for delta in model.stream_chat(history, max_tokens, temperature, top_p):
            reply.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
