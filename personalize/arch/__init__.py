"""Architecture registry: model_type -> definition."""

from __future__ import annotations

from .base import Architecture, ArchitectureError, LibraryConfig, library_key
from .gemma2 import Gemma2
from .gemma3 import Gemma3Text
from .llama import Llama
from .mistral import Mistral
from .phi3 import Phi3
from .qwen2 import Qwen2
from .qwen3 import Qwen3

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a for a in (Llama(), Mistral(), Qwen2(), Qwen3(), Gemma2(), Gemma3Text(), Phi3())}


def get_architecture(model_type: str | None, path: str = "config.json") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ArchitectureError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}",
            path=path,
            hint=f"convert a fine-tune of one of: {', '.join(sorted(ARCHITECTURES))}",
        )
    return ARCHITECTURES[model_type]


__all__ = ["ARCHITECTURES", "Architecture", "ArchitectureError", "LibraryConfig", "get_architecture", "library_key"]
