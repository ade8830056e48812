"""Typed errors of the artifacts package; each carries the file at fault and what to do."""

from __future__ import annotations

from personalize_errors import UserError


class ArtifactError(UserError):
    """An artifact file cannot be written or read as MLC expects."""


class TensorCacheError(ArtifactError):
    """tensor-cache.json or a params shard is malformed or inconsistent."""


class ChatConfigError(ArtifactError):
    """mlc-chat-config.json cannot be built from the source directory."""


class ConvTemplateError(ArtifactError):
    """The chat template cannot be expressed as an MLC conversation template."""


class LineageError(ArtifactError):
    """personalize.json is missing or malformed."""
