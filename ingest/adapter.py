"""A PEFT LoRA adapter directory, read lazily: `load_adapter(dir)` -> `Adapter`.

The jobs live in their own modules: `adapter_config` (adapter_config.json and what is refused),
`adapter_plan` (PEFT key layouts -> one `TensorEdit` per base tensor), `adapter_check` (the plan
against the base). Weights are indexed through `ingest.weights.TensorFile` (the same safetensors
policy and .bin loader as full models); no tensor is read until asked for.
`ingest.merge.merge_tensor` applies a plan to one base tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import adapter_check
from .adapter_config import CONFIG_NAME, read_adapter_config
from .adapter_plan import LoraFactors, TensorEdit, get_pattern_key, plan_edits
from .errors import AdapterError, IngestError
from .tokenizer_check import check_tokenizer_files
from .weights import TensorFile

__all__ = ["Adapter", "AdapterError", "LoraFactors", "TensorEdit", "get_pattern_key", "load_adapter",
           "CONFIG_NAME", "SAFETENSORS_NAME", "BIN_NAME"]

SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"


@dataclass
class Adapter:
    """A PEFT LoRA adapter, indexed but not loaded. Build it with `load_adapter`."""

    adapter_dir: Path
    weights_path: Path
    config: dict[str, Any]
    config_sha256: str
    _weights: TensorFile = field(repr=False)
    _edits: dict[str, TensorEdit] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)
    _base_vocab_size: int | None = field(default=None, repr=False)

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    def target_hf_names(self) -> set[str]:
        """The base HF tensor names this adapter changes."""
        return set(self._edits)

    def edit_for(self, hf_name: str) -> TensorEdit | None:
        return self._edits.get(hf_name)

    def tensor(self, key: str) -> torch.Tensor:
        """One adapter tensor, read now, as float32."""
        return torch.from_numpy(np.asarray(self._weights.read(key), dtype=np.float32))

    def resized_vocab_size(self, base_vocab_size: int | None = None) -> int | None:
        """The vocab size of replaced embed_tokens/lm_head when it differs from the base's.

        The base's vocab comes from `base_vocab_size` or from `check_against_base`; with neither,
        this is the vocab size the adapter's embedding/head tensors carry (None if it carries none).
        """
        base_vocab = base_vocab_size if base_vocab_size is not None else self._base_vocab_size
        return adapter_check.resized_vocab_size(self._edits, self._weights, base_vocab, self._fail)

    def check_against_base(self, base_shapes: dict[str, tuple[int, ...]], base_config: dict) -> None:
        """Refuse an adapter whose tensors do not fit the base; names the first mismatching tensor."""
        self._base_vocab_size = base_config.get("vocab_size")
        self._edits = adapter_check.check_against_base(
            self._edits, self._weights, self.config, {k: tuple(v) for k, v in base_shapes.items()}, base_config,
            self._warn, self._fail)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _fail(self, message: str, hint: str | None = None) -> AdapterError:
        return AdapterError(message, path=self.weights_path, hint=hint)

    def close(self) -> None:
        self._weights.close()

    def __enter__(self) -> "Adapter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_adapter(adapter_dir: Path | str) -> Adapter:
    """Read adapter_config.json and index the weights; refuse what cannot be merged exactly."""
    adapter_dir = Path(adapter_dir)
    config, config_sha256 = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / SAFETENSORS_NAME
    if not weights_path.is_file():
        weights_path = adapter_dir / BIN_NAME
    if not weights_path.is_file():
        raise AdapterError(f"no {SAFETENSORS_NAME} or {BIN_NAME} in {adapter_dir}", path=adapter_dir,
                           hint="the adapter directory is incomplete; copy the weights file next to the config")
    try:
        weights = TensorFile(weights_path)
    except AdapterError:
        raise
    except IngestError as exc:  # the same policy as full models, reported as the adapter's problem
        raise AdapterError(f"cannot read adapter weights: {exc.message}", path=weights_path,
                           hint=exc.hint) from exc
    check_tokenizer_files(adapter_dir)  # an adapter may carry its own (resized) tokenizer
    adapter = Adapter(adapter_dir=adapter_dir, weights_path=weights_path, config=config,
                      config_sha256=config_sha256, _weights=weights)
    adapter._edits = plan_edits(weights, config, adapter._fail)
    if str(config.get("init_lora_weights")).lower() == "loftq":
        adapter.warnings.append("LoftQ adapters were trained against a quantized base; merging into the "
                                "full-precision base is close to, not equal to, the trained model")
    return adapter
