"""Typed errors of the quantize stage; the CLI turns them into one line and exit code 2."""

from __future__ import annotations

from personalize_errors import UserError


class QuantizeError(UserError):
    """A parameter or a scheme cannot be quantized as asked.

    `path` is the file the problem comes from (None when it is not about a file), `hint` says
    what the user can do about it.
    """


class NonFiniteWeightError(QuantizeError):
    """A weight holds NaN or Inf (in the source, or after the cast to the model dtype)."""

    def __init__(self, message: str, param: str, path: str | None = None, hint: str | None = None):
        super().__init__(message, path=path, hint=hint)
        self.param = param
