"""Typed ingest errors; each names the file at fault (`path`) and what to do (`hint`)."""

from __future__ import annotations

import os


class IngestError(ValueError):
    def __init__(self, message: str, path: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.hint = hint
