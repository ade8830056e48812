"""PEFT's key layouts -> one plan per *base* tensor (a `TensorEdit`).

A plan says which full replacement, which LoRA factors with which scaling, which DoRA magnitude
and which token rows change one base tensor; `ingest.merge` applies it.

Facts from peft 0.21.2 (read, not copied): scaling is alpha/r, or alpha/sqrt(r) with use_rslora;
rank_pattern/alpha_pattern keys are matched against the module path with
`re.match(rf"(.*\\.)?({key})$", path)`, first match in dict order; LoRA on nn.Embedding stores
lora_embedding_A as [r, vocab] and lora_embedding_B as [hidden, r]; modules_to_save and resized
embeddings are saved as full tensors; DoRA's magnitude is saved as `lora_magnitude_vector`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

from .errors import AdapterError
from .weights import TensorFile

PEFT_PREFIX = "base_model.model."

# Modules whose first dimension is the vocabulary: a resized vocab may change it.
VOCAB_MODULES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")

# Raises an AdapterError naming the weights file: fail(message, hint).
FailFn = Callable[[str, str], AdapterError]


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA pair on one module, with the scaling peft would give it."""

    a_key: str
    b_key: str
    scaling: float
    rank: int
    embedding: bool = False  # lora_embedding_A [r, vocab] / lora_embedding_B [hidden, r]
    magnitude_key: str | None = None  # DoRA
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class TensorEdit:
    """Everything an adapter does to one base tensor, applied in this order."""

    hf_name: str
    replacement_key: str | None = None  # full tensor that replaces the base (modules_to_save, resize)
    lora: LoraFactors | None = None  # weight += s·BA (or the DoRA merge)
    bias_delta: tuple[str, float] | None = None  # bias += s·lora_B.bias
    token_rows: tuple[str, tuple[int, ...]] | None = None  # rows[indices] = trainable tokens

    @property
    def changes_vocab_dim(self) -> bool:
        return module_leaf(self.hf_name.rsplit(".", 1)[0]) in VOCAB_MODULES


def get_pattern_key(pattern_keys: Iterable[str], module_path: str) -> str:
    """peft's rule: the first pattern that matches a dotted suffix of the module path, else the path."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return module_path


def module_leaf(module_path: str) -> str:
    return module_path.rsplit(".", 1)[-1]


# Key layouts, after the `base_model.model.` prefix is removed. An adapter-name segment
# (".default") is optional: peft strips it when saving, some tools keep it.
_KEY_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("lora_A", re.compile(r"^(?P<mod>.+)\.lora_A(?:\.[^.]+)?\.weight$")),
    ("lora_B", re.compile(r"^(?P<mod>.+)\.lora_B(?:\.[^.]+)?\.weight$")),
    ("lora_B_bias", re.compile(r"^(?P<mod>.+)\.lora_B(?:\.[^.]+)?\.bias$")),
    ("emb_A", re.compile(r"^(?P<mod>.+)\.lora_embedding_A(?:\.[^.]+)?$")),
    ("emb_B", re.compile(r"^(?P<mod>.+)\.lora_embedding_B(?:\.[^.]+)?$")),
    ("magnitude", re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")),
    ("tokens", re.compile(r"^(?P<mod>.+)\.token_adapter\.trainable_tokens_delta(?:\.[^.]+)?$")),
    ("original", re.compile(r"^(?P<mod>.+)\.original_module\.(?P<param>[^.]+)$")),
    ("saved", re.compile(r"^(?P<mod>.+)\.modules_to_save(?:\.[^.]+)?\.(?P<param>weight|bias)$")),
    ("base_layer", re.compile(r"^(?P<mod>.+)\.base_layer\.(?P<param>weight|bias)$")),
]
# Tensors of other PEFT methods (or LoRA variants) that must not be taken for a replacement.
_FOREIGN_MARKERS = ("lora_", "ia3_", "hada_", "lokr_", "vera_", "oft_", "boft_", "ranklist", "fourierft_")


def plan_edits(weights: TensorFile, config: dict[str, Any], fail: FailFn) -> dict[str, TensorEdit]:
    """Group the adapter's tensors by the base tensor they change."""
    parts: dict[str, dict[str, str]] = {}  # module path -> role -> key
    replacements: dict[str, str] = {}  # hf name -> key
    for key in weights.names():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for role, pattern in _KEY_PATTERNS:
            m = pattern.match(name)
            if m is None:
                continue
            if role == "original":
                break  # peft's copy of the untouched base module: nothing to merge
            if role in ("saved", "base_layer"):
                _add_unique(replacements, f"{m['mod']}.{m['param']}", key, weights, fail)
            else:
                if role in parts.setdefault(m["mod"], {}):
                    raise fail(f"two tensors for {role} of {m['mod']}: {parts[m['mod']][role]}, {key}",
                               "the file holds several adapters; save one adapter per directory")
                parts[m["mod"]][role] = key
            break
        else:
            leaf = name.rsplit(".", 1)[-1]
            if any(marker in name for marker in _FOREIGN_MARKERS) or leaf not in ("weight", "bias"):
                raise fail(f"unsupported adapter tensor {key}",
                           "only LoRA/DoRA factors, modules_to_save and resized embeddings "
                           "can be merged; merge with peft and add the result as a full fine-tune")
            _add_unique(replacements, name, key, weights, fail)  # modules_to_save / resized vocab / bias="all"

    edits: dict[str, TensorEdit] = {name: TensorEdit(hf_name=name, replacement_key=key)
                                    for name, key in replacements.items()}
    token_indices = config.get("trainable_token_indices")
    for mod, roles in parts.items():
        weight_name = f"{mod}.weight"
        edit = edits.get(weight_name, TensorEdit(hf_name=weight_name))
        lora = _lora_factors(weights, config, mod, roles, fail)
        if lora is not None:
            edit = replace(edit, lora=lora)
        if "tokens" in roles:
            edit = replace(edit, token_rows=(roles["tokens"], _token_indices(mod, token_indices, fail)))
        if "lora_B_bias" in roles:
            bias_name = f"{mod}.bias"
            edits[bias_name] = replace(edits.get(bias_name, TensorEdit(hf_name=bias_name)),
                                       bias_delta=(roles["lora_B_bias"], lora.scaling if lora else 1.0))
        if edit.lora is not None or edit.token_rows is not None:
            edits[weight_name] = edit
    return edits


def same_tensor(weights: TensorFile, a: str, b: str, transpose: bool = False) -> bool:
    """Bit-equal tensors (b transposed if asked)."""
    x, y = weights.read(a), weights.read(b)
    return bool(np.array_equal(x, y.T if transpose else y))


def _add_unique(target: dict[str, str], name: str, key: str, weights: TensorFile, fail: FailFn) -> None:
    """One replacement per base tensor. peft saves a resized modules_to_save module twice (as
    `x.weight` and `x.modules_to_save.weight`), with equal values; different values are ambiguous."""
    if name in target:
        if same_tensor(weights, target[name], key):
            return
        raise fail(f"two different replacement tensors for {name}: {target[name]} and {key}",
                   "the file holds several adapters; save one adapter per directory")
    target[name] = key


def _lora_factors(weights: TensorFile, config: dict[str, Any], mod: str, roles: dict[str, str],
                  fail: FailFn) -> LoraFactors | None:
    linear = "lora_A" in roles or "lora_B" in roles
    embedding = "emb_A" in roles or "emb_B" in roles
    if not linear and not embedding:
        if "magnitude" in roles or "lora_B_bias" in roles:
            raise fail(f"{mod} has DoRA/bias tensors but no LoRA factors", "the adapter file is incomplete; save it again")
        return None
    if linear and embedding:
        raise fail(f"{mod} has both linear and embedding LoRA factors", "save the adapter again")
    a_key = roles.get("lora_A" if linear else "emb_A")
    b_key = roles.get("lora_B" if linear else "emb_B")
    if a_key is None or b_key is None:
        raise fail(f"{mod} has only one of its two LoRA factors", "save the adapter again")
    if embedding and "magnitude" in roles:
        raise fail(f"DoRA on the embedding {mod} is not supported",
                   "retrain with use_dora=False for embeddings (DoRA on linear layers is fine), "
                   "or merge with peft and add the result as a full fine-tune")
    a_shape = weights.shape(a_key)
    rank = int(a_shape[0]) if a_shape else 0
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), mod), config.get("r", 8))
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), mod), config.get("lora_alpha", 8))
    if r != rank:
        raise fail(f"adapter tensor {a_key} has rank {rank} but adapter_config.json gives r={r} for {mod}",
                   "the config does not belong to these weights; restore the matching "
                   "adapter_config.json (check r and rank_pattern)")
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return LoraFactors(a_key=a_key, b_key=b_key, scaling=scaling, rank=rank, embedding=embedding,
                       magnitude_key=roles.get("magnitude"),
                       fan_in_fan_out=bool(config.get("fan_in_fan_out")) and not embedding)


def _token_indices(mod: str, spec: Any, fail: FailFn) -> tuple[int, ...]:
    if isinstance(spec, list):
        return tuple(int(i) for i in spec)
    if isinstance(spec, dict):
        for name, indices in spec.items():
            if mod == name or mod.endswith(f".{name}"):
                return tuple(int(i) for i in indices)
    raise fail(f"trainable token rows for {mod} but no matching trainable_token_indices in the config",
               "restore the adapter_config.json that belongs to these weights")
