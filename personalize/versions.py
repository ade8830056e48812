"""Versions of the tools that shaped an artifact (recorded in personalize.json)."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("personalize", "apache-tvm", "torch", "transformers", "peft", "safetensors", "numpy", "ml_dtypes")


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out
