"""Rebuild the LibraryConfig an artifact was converted for from its mlc-chat-config.json."""

from __future__ import annotations

from typing import Any

from artifacts.format import MLC_CHAT_CONFIG_JSON
from personalize.arch import LibraryConfig, get_architecture


def library_config_from_chat_config(chat_config: dict[str, Any], path: str = MLC_CHAT_CONFIG_JSON) -> LibraryConfig:
    """The LibraryConfig (and so the library key) of an artifact.

    The architecture definition re-derives the config (validating it), then every field the chat
    config states is taken from it verbatim, so the result is exactly what the converter wrote.
    """
    model_type = chat_config.get("model_type")
    arch = get_architecture(model_type, path=path)
    mc = dict(chat_config.get("model_config") or {})
    derived = arch.library_config(arch.hf_view(mc), path=path)
    model_config = {k: mc.get(k, v) for k, v in derived.model_config.items()}
    compiled = {k: mc.get(k, v) for k, v in derived.compiled.items()}
    return LibraryConfig(derived.model_type, model_config, compiled, derived.symbolic_vocab)
