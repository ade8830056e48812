"""config.json's sizes, checked for type and against the tensors actually present, before anything
is allocated from them.

The parameter list, the library config and every later buffer are sized from these numbers; a
config is untrusted input (`add hf://...` downloads it), so a count of 10^9 layers must fail here
in microseconds instead of allocating for minutes. Every error names config.json.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

from .errors import IngestError
from .tokenizer_check import check_generation_fields

# Sizes the architectures read (HF names). Each, when present, is a positive integer.
SIZE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
             "num_key_value_heads", "head_dim")
# Sequence lengths: positive integers, bounded by what a 32-bit runtime index can address.
LENGTH_KEYS = ("context_window_size", "max_position_embeddings", "max_sequence_length", "sliding_window")
MAX_LENGTH = 2**31 - 1
# Real numbers the library bakes in.
POSITIVE_FLOAT_KEYS = ("rms_norm_eps", "rope_theta", "layer_norm_eps")

# Flags the architectures read with bool(): the string "false" would silently mean true.
BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")

# `model.layers.12.mlp...`, `transformer.h.3.attn...`: the layer index in a tensor name.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")

HINT = "use the config.json the model was trained and saved with"

# RoPE scaling kinds and the numbers each needs (transformers refuses the config without them, so the
# tokenizer and chat template could not be read either; the library would compile garbage).
ROPE_REQUIRED = {
    "default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor"), "su": ("short_factor", "long_factor"),
}


def check_config(config: dict[str, Any], path: Path, tensor_shapes: dict[str, tuple[int, ...]]) -> None:
    """Types and sizes of config.json (`path`) against the checkpoint's tensors (name -> shape)."""
    def bad(message: str, hint: str = HINT) -> IngestError:
        return IngestError(f"config.json: {message}", path=path, hint=hint)

    for key in SIZE_KEYS:
        value = config.get(key)
        if value is None and key in ("num_key_value_heads", "head_dim"):
            continue  # optional: the architecture derives them
        if key in config and not _positive_int(value):
            raise bad(f"{key} must be a positive integer, got {value!r}")
    for key in LENGTH_KEYS:
        value = config.get(key)
        if value is None or (key == "sliding_window" and value == 0):
            continue  # sliding_window: null or 0 means none
        if not _positive_int(value) or value > MAX_LENGTH:
            raise bad(f"{key} must be a positive integer up to {MAX_LENGTH}, got {value!r}")
    for key in POSITIVE_FLOAT_KEYS:
        value = config.get(key)
        if value is not None and not (_number(value) and value > 0):
            raise bad(f"{key} must be a positive number, got {value!r}")
    for key in BOOL_KEYS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise bad(f"{key} must be true or false, got {config[key]!r}")
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise bad(f"rope_scaling must be an object or null, got {scaling!r}")
    params = config.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise bad(f"rope_parameters must be an object or null, got {params!r}")
    for key, rope in (("rope_scaling", scaling), ("rope_parameters", params)):
        if rope:
            _check_rope(key, rope, bad)

    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise bad(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}",
                  hint="grouped-query attention needs whole groups; fix num_key_value_heads")

    check_generation_fields(config, path)
    _check_against_tensors(config, tensor_shapes, bad)


def _check_against_tensors(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], bad) -> None:
    """No size may exceed what the checkpoint holds: every layer needs tensors, every width a dimension."""
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int):
        present = layer_indices(shapes)
        available = len(present) if present else len(shapes)
        if layers > available:
            raise bad(f"num_hidden_layers={layers} but the weights hold {available} layers",
                      hint="the config does not belong to these weights; use the matching config.json")
    widest = max((d for shape in shapes.values() for d in shape), default=0)
    for key in ("hidden_size", "intermediate_size", "vocab_size", "num_attention_heads", "num_key_value_heads",
                "head_dim"):
        value = config.get(key)
        if isinstance(value, int) and value > widest:
            raise bad(f"{key}={value} exceeds every tensor dimension in the weights (largest {widest})",
                      hint="the config does not belong to these weights; use the matching config.json")
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int) and heads * head_dim > widest:
        raise bad(f"num_attention_heads * head_dim = {heads * head_dim} exceeds every tensor dimension "
                  f"in the weights (largest {widest})",
                  hint="the config does not belong to these weights; use the matching config.json")


def _check_rope(key: str, rope: dict[str, Any], bad) -> None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_REQUIRED:
        raise bad(f"{key}.rope_type {kind!r} is not one of {', '.join(sorted(ROPE_REQUIRED))}")
    for field in ROPE_REQUIRED[kind]:
        value = rope.get(field)
        ok = (isinstance(value, list) and value and all(_number(v) and v > 0 for v in value)) \
            if field.endswith("_factor") and kind in ("longrope", "su") else (_number(value) and value > 0)
        if not ok:
            raise bad(f"{key} of type {kind!r} needs a positive {field}"
                      + (" list" if kind in ("longrope", "su") else "") + f", got {value!r}")


def layer_indices(names: Iterable[str]) -> set[int]:
    return {int(m.group(1)) for name in names if (m := _LAYER_INDEX.search(name))}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # ints of any size
