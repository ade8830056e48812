"""Typed errors of the library stage (the CLI turns them into one line, exit 2)."""

from __future__ import annotations

from personalize_errors import UserError


class LibraryError(UserError):
    """A library cannot be built, found or used; `path` is the file at fault, `hint` what to do."""
