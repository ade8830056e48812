"""Typed runtime errors (the CLI turns them into one line and exit code 2)."""

from __future__ import annotations

from personalize_errors import UserError


class RuntimeUserError(UserError):
    """Base: `path` is the file at fault, `hint` what to do."""


class ArtifactMismatchError(RuntimeUserError):
    """The artifact does not fit the library; `field` names the parameter or config field."""

    def __init__(self, message: str, path: str | None = None, hint: str | None = None, field: str | None = None):
        super().__init__(message, path, hint)
        self.field = field


class TokenRangeError(RuntimeUserError):
    """A token id outside [0, vocab_size): refused before it reaches the embedding (out-of-bounds read)."""
