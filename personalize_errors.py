"""The one user-facing error type of every personalize package.

A `UserError` is something the user can fix: it names what went wrong (`message`), the file or
directory at fault (`path`, may be None) and what to do about it (`hint`, may be None). The CLI
catches this type only and prints one line with exit code 2; anything else is a bug and keeps
its traceback. Packages subclass it only to mark the domain (like huggingface_hub's hierarchy);
the fields and their formatting live here and nowhere else.
"""

from __future__ import annotations

import os


class UserError(Exception):
    def __init__(self, message: str, path: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.hint = hint

    def one_line(self) -> str:
        """`error: what (path) — what to do`, on one line whatever the message holds."""
        text = str(self).strip()
        msg = " ".join(text.split()) if text else type(self).__name__
        line = f"error: {msg}"
        if self.path and self.path not in msg:
            line += f" ({self.path})"
        if self.hint:
            line += f" — {' '.join(self.hint.split())}"
        return line
