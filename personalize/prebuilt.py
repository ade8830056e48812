"""At `add`: find MLC's prebuilt library that fits the conversion and size the artifact's limits for it.

MLC compiles its WebGPU libraries with prefill chunk 1024 and runs them with a 4096-token context
(its own WebLLM records); a base's full context (32768 for Qwen2, 131072 for Llama-3.2) would make
WebLLM allocate a KV cache many times larger than MLC plans for. So an artifact whose config fits a
prebuilt library gets that library's context window and prefill chunk in mlc-chat-config.json, unless
the user asks for other values. The choice is recorded in personalize.json.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from catalog import find_libraries, why_no_library

from .arch import ARCHITECTURES, LibraryConfig


def catalog_view(model_type: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """MLC's model_config with what only the architecture definition knows made explicit, for the catalog's
    comparison: whether logits come from the embedding (MLC's Gemma configs have no tie field; Phi-4-mini
    writes a copy of the embedding as lm_head and still counts as tied)."""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        return model_config
    config = LibraryConfig(model_type, model_config, {}, symbolic_vocab=False)
    return {**model_config, "tie_word_embeddings": arch.layout(config).head != "own"}


def fit_prebuilt(config: LibraryConfig, quantization: str, *, context_window: int | None = None,
                 prefill_chunk: int | None = None) -> tuple[LibraryConfig, dict[str, Any]]:
    """(config with the chosen context/prefill, the personalize.json record of the prebuilt library)."""
    view = catalog_view(config.model_type, config.model_config)
    matches = find_libraries(config.model_type, view, quantization)
    if matches:
        lib = matches[0]  # the newest library directory: what a current WebLLM release loads
        record: dict[str, Any] = {**lib.summary(),
                                  "also_in": [{"library": m.library, "url": m.url, "webllm_range": m.webllm["range"]}
                                              for m in matches[1:]]}
        context_window = context_window or lib.context_window_size
        prefill_chunk = prefill_chunk or lib.prefill_chunk_size
    else:
        # Said once, by the CLI after a successful add (personalize/cli/convert.py), and kept in lineage.
        record = {"library": None, "reason": why_no_library(config.model_type, view, quantization)}
    return with_limits(config, context_window, prefill_chunk), record


def with_limits(config: LibraryConfig, context_window: int | None, prefill_chunk: int | None) -> LibraryConfig:
    """The config with another context window / prefill chunk (both compiled-in for our own library)."""
    mc = dict(config.model_config)
    sliding = int(mc.get("sliding_window_size", -1) or -1)
    if context_window is not None and int(mc.get("context_window_size", -1)) != -1:
        mc["context_window_size"] = int(context_window)
    if prefill_chunk is not None:
        mc["prefill_chunk_size"] = int(prefill_chunk)
    window = [x for x in (int(mc.get("context_window_size", -1)), sliding) if x > 0]
    if window and int(mc.get("prefill_chunk_size", -1)) > min(window):
        mc["prefill_chunk_size"] = min(window)  # a chunk never exceeds the attention window
    compiled = {k: mc.get(k, v) if k in ("context_window_size", "prefill_chunk_size") else v
                for k, v in config.compiled.items()}
    return dataclasses.replace(config, model_config=mc, compiled=compiled)
