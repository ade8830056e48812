"""The fixed model library: one compiled graph per (architecture config, quantization, target).

    config = library_config_from_chat_config(chat_config)
    lib = ensure_library(config, "q4f16_1", "llvm")   # compiles once, then cached by library key

Attributes are imported lazily so that `import personalize` does not load the TVM compiler.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compile_library": "build", "export": "build", "make_target": "build",
    "CachedLibrary": "cache", "ensure_library": "cache", "libs_dir": "cache", "library_path": "cache",
    "list_libraries": "cache",
    "library_config_from_chat_config": "from_chat_config",
    "LibraryError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
