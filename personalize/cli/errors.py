"""Turn typed errors into one clear line and exit code 2; the only place that does so.

Convention across packages: a user-facing error is an exception with `path` (the file or
directory at fault, may be None) and `hint` (what to do, may be None) attributes.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

EXIT_USER_ERROR = 2


def is_user_error(exc: BaseException) -> bool:
    return hasattr(exc, "hint") and hasattr(exc, "path")


def one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    path = getattr(exc, "path", None)
    hint = getattr(exc, "hint", None)
    parts = [f"error: {msg}"]
    if path and str(path) not in msg:
        parts[0] += f" ({path})"
    if hint:
        parts.append(hint)
    return " — ".join(parts)


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command: user errors, missing files, full disks and Ctrl-C become one line, exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            fail("error: interrupted — nothing was written; run the command again")
        except BaseException as exc:  # noqa: BLE001 - the CLI edge decides what the user sees
            if is_user_error(exc):
                fail(one_line(exc))
            if isinstance(exc, OSError) and exc.errno is not None:
                where = exc.filename or ""
                fail(f"error: {exc.strerror}: {where} — check that the location exists, is writable "
                     "and has free space")
            raise

    return wrapper


def print_json(doc: Any) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
