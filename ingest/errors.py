"""Typed ingest errors; each names the file at fault (`path`) and what to do (`hint`)."""

from __future__ import annotations

from personalize_errors import UserError


class IngestError(UserError):
    """A source (model, adapter, weights) cannot be read as given."""


class AdapterError(IngestError):
    """A user-facing problem with an adapter: `path` is the file at fault, `hint` says what to do."""
