"""Typed errors of the artifacts package; each carries the file at fault and what to do."""

from __future__ import annotations

from pathlib import Path


class ArtifactError(Exception):
    """An artifact file cannot be written or read as MLC expects."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.hint = hint


class TensorCacheError(ArtifactError):
    """tensor-cache.json or a params shard is malformed or inconsistent."""


class ChatConfigError(ArtifactError):
    """mlc-chat-config.json cannot be built from the source directory."""


class ConvTemplateError(ArtifactError):
    """The chat template cannot be expressed as an MLC conversation template."""


class LineageError(ArtifactError):
    """personalize.json is missing or malformed."""
