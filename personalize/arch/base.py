"""One definition per architecture: config -> compiled-in config, layout, parameter list, name mapping.

The converter (quantize/, via `source_params`) and the compiler (personalize.library, via
`layout`) both derive from the one `DecoderLayout` an architecture returns, so the artifact and the
library cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from personalize_errors import UserError
from quantize.spec import SourceParam

from .decoder import decoder_params
from .layout import DecoderLayout, RopeLayout


class ArchitectureError(UserError):
    """The model's config cannot be expressed by a supported architecture."""


@dataclass(frozen=True)
class LibraryConfig:
    """What is baked into a compiled library, plus MLC's `model_config` for mlc-chat-config.json.

    `model_config` holds MLC's dataclass fields in MLC's declaration order (what gen_config
    writes); `compiled` holds the subset our library bakes in and that keys the library cache.
    """

    model_type: str
    model_config: dict[str, Any]
    compiled: dict[str, Any]
    symbolic_vocab: bool

    @property
    def vocab_size(self) -> int:
        return int(self.model_config["vocab_size"])

    @property
    def context_window_size(self) -> int:
        return int(self.model_config.get("context_window_size", -1))

    @property
    def prefill_chunk_size(self) -> int:
        return int(self.model_config.get("prefill_chunk_size", -1))


def library_key(config: LibraryConfig, quantization: str) -> str:
    """Hash of (model_type, compiled-in config, quantization): equal for every fine-tune of a base."""
    doc = {"model_type": config.model_type, "compiled": config.compiled, "quantization": quantization}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def rope_from_hf(hf: dict[str, Any]) -> tuple[float | int, dict[str, Any] | None]:
    """(theta, rope_scaling) from either the transformers<5 or the transformers>=5 layout.

    transformers 5 writes `rope_parameters: {rope_theta, rope_type, ...}` and no top-level
    `rope_theta`; reading only the old key would silently compile theta=10000 (MLC's llama
    loader does exactly that), so both layouts are read here.
    """
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") not in ("default", None):
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None:
        scaling = dict(scaling)
        if "rope_type" not in scaling and "type" in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type") in (None, "default"):
            scaling = None
    return theta, scaling


def context_window(hf: dict[str, Any], path: str) -> int:
    for key in ("context_window_size", "max_position_embeddings", "max_sequence_length"):
        if hf.get(key):
            return int(hf[key])
    raise ArchitectureError(
        "config.json gives no maximum sequence length",
        path=path,
        hint="add max_position_embeddings to config.json",
    )


def require(hf: dict[str, Any], keys: list[str], path: str) -> None:
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise ArchitectureError(
            f"config.json lacks {', '.join(missing)}",
            path=path,
            hint="use the config.json the model was trained with",
        )


def compiled_subset(mc: dict[str, Any], runtime_only: tuple[str, ...]) -> dict[str, Any]:
    """The model_config fields baked into a library: all but those that only size the runtime."""
    return {k: v for k, v in mc.items() if k not in runtime_only}


@dataclass(frozen=True)
class Architecture:
    """Base class: subclasses define `library_config` (MLC's model_config, in MLC's field order)
    and `layout` (the decoder the library computes); the parameter list follows from the layout."""

    model_type: str
    hf_architectures: tuple[str, ...] = field(default=())

    def library_config(self, hf: dict[str, Any], path: str = "config.json") -> LibraryConfig:
        raise NotImplementedError

    def layout(self, config: LibraryConfig) -> DecoderLayout:
        raise NotImplementedError

    def source_params(self, config: LibraryConfig) -> list[SourceParam]:
        return decoder_params(self.layout(config))

    def hf_view(self, model_config: dict[str, Any]) -> dict[str, Any]:
        """An mlc-chat-config `model_config` in the config.json vocabulary `library_config` reads
        (to re-derive and validate the LibraryConfig of an artifact)."""
        hf = dict(model_config)
        hf["model_type"] = self.model_type
        if model_config.get("context_window_size", -1) not in (None, -1):
            hf["max_position_embeddings"] = model_config["context_window_size"]
        return hf

    def unused_hf_names(self, config: LibraryConfig) -> set[str]:
        """HF tensors that are known and deliberately not used (not warned about)."""
        n = self.layout(config).layers
        return {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(n)}


def standard_layout(config: LibraryConfig, theta_key: str, **layout: Any) -> DecoderLayout:
    """A DecoderLayout from the model_config fields every llama-like config spells the same way;
    `theta_key` names the RoPE base field (position_embedding_base or rope_theta), `layout`
    sets the architecture's own choices."""
    c = config.model_config
    layout.setdefault("rope", RopeLayout(c[theta_key], c.get("rope_scaling") or None))
    layout.setdefault("embed_vocab_symbolic", config.symbolic_vocab)
    layout.setdefault("head_vocab_symbolic", config.symbolic_vocab)
    return DecoderLayout(hidden=c["hidden_size"], intermediate=c["intermediate_size"], layers=c["num_hidden_layers"],
                         heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
                         norm_eps=c["rms_norm_eps"], vocab=c["vocab_size"], **layout)
