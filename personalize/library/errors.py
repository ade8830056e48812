"""Typed errors of the library stage (the CLI turns them into one line, exit 2)."""

from __future__ import annotations


class LibraryError(RuntimeError):
    """A library cannot be built, found or used; `path` is the file at fault, `hint` what to do."""

    def __init__(self, message: str, path: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.hint = hint
