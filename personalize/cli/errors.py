"""Turn user errors into one clear line and exit code 2; the only place that does so.

Every package raises `personalize_errors.UserError` (or a domain subclass) for what the user can
fix; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from personalize_errors import UserError

EXIT_USER_ERROR = 2


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
        except UserError as exc:
            fail(exc.one_line())
        except OSError as exc:
            if exc.errno is None:
                raise
            where = exc.filename or ""
            fail(f"error: {exc.strerror}: {where} — check that the location exists, is writable "
                 "and has free space")

    return wrapper


def print_json(doc: Any) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
