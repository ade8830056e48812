"""Architecture registry: model_type -> definition."""

from __future__ import annotations

from .base import Architecture, ArchitectureError, LibraryConfig, library_key
from .llama import Llama
from .mistral import Mistral
from .qwen2 import Qwen2

ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (Llama(), Mistral(), Qwen2())}


def get_architecture(model_type: str | None, path: str = "config.json") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ArchitectureError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}",
            path=path,
            hint="convert a llama, mistral or qwen2 fine-tune",
        )
    return ARCHITECTURES[model_type]


__all__ = ["ARCHITECTURES", "Architecture", "ArchitectureError", "LibraryConfig", "get_architecture", "library_key"]
