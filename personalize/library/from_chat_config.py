"""Rebuild the LibraryConfig an artifact was converted for from its mlc-chat-config.json."""

from __future__ import annotations

from typing import Any

from artifacts.format import MLC_CHAT_CONFIG_JSON
from personalize.arch import LibraryConfig, get_architecture


def _hf_view(model_type: str, mc: dict[str, Any]) -> dict[str, Any]:
    """model_config in the HF config.json vocabulary the architecture definitions read."""
    hf = dict(mc)
    hf["model_type"] = model_type
    theta = mc.get("position_embedding_base", mc.get("rope_theta"))
    if theta is not None:
        hf["rope_theta"] = theta
    if mc.get("context_window_size", -1) not in (None, -1):
        hf["max_position_embeddings"] = mc["context_window_size"]
    if "sliding_window_size" in mc:
        hf["sliding_window"] = None if mc["sliding_window_size"] in (None, -1) else mc["sliding_window_size"]
    return hf


def library_config_from_chat_config(chat_config: dict[str, Any], path: str = MLC_CHAT_CONFIG_JSON) -> LibraryConfig:
    """The LibraryConfig (and so the library key) of an artifact.

    The architecture definition re-derives the config (validating it), then every field the chat
    config states is taken from it verbatim, so the result is exactly what the converter wrote.
    """
    model_type = chat_config.get("model_type")
    arch = get_architecture(model_type, path=path)
    mc = dict(chat_config.get("model_config") or {})
    derived = arch.library_config(_hf_view(model_type, mc), path=path)
    model_config = {k: mc.get(k, v) for k, v in derived.model_config.items()}
    compiled = {k: mc.get(k, v) for k, v in derived.compiled.items()}
    return LibraryConfig(derived.model_type, model_config, compiled, derived.symbolic_vocab)
