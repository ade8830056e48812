"""Merge a LoRA adapter into one base tensor at a time, in float32, exactly as peft merges.

The pipeline streams base tensors; `merge_tensor` is called for each. An untouched tensor costs a
dict lookup. A touched one reads only the adapter tensors it needs (lazily, from safe_open) and does
one rank-r matmul. The operations and their order follow peft 0.21.2's merge_and_unload, so that a
float32 base gives the same bits as peft up to BLAS summation order:

  W = replacement (modules_to_save / resized vocab / saved base_layer) or the base tensor
  Δ = transpose(B @ A, fan_in_fan_out) * s             (embedding: (B @ A).T * s)
  plain LoRA:  W + Δ
  DoRA:        (m / ||W + Δ||_row) * (W + Δ)          (row = output feature; a column under fan_in_fan_out)
  token rows:  W[indices] = trainable_tokens_delta
  bias:        b + s * lora_B.bias
"""

from __future__ import annotations

import numpy as np
import torch

from ingest.adapter import Adapter, LoraFactors, TensorEdit


def merge_tensor(adapter: Adapter, hf_name: str, base: np.ndarray) -> np.ndarray:
    """The merged tensor for one base tensor (float32), or `base` itself if the adapter leaves it alone."""
    edit = adapter.edit_for(hf_name)
    if edit is None:
        return base
    return apply_edit(adapter, edit, base)


def apply_edit(adapter: Adapter, edit: TensorEdit, base: np.ndarray) -> np.ndarray:
    if edit.replacement_key is not None:
        weight = adapter.tensor(edit.replacement_key)
    else:
        weight = torch.from_numpy(np.array(base, dtype=np.float32))  # a private float32 copy
    if edit.lora is not None:
        weight = merge_lora(weight, *_factors(adapter, edit.lora), edit.lora)
    if edit.bias_delta is not None:
        key, scaling = edit.bias_delta
        weight = weight + adapter.tensor(key) * scaling
    if edit.token_rows is not None:
        key, indices = edit.token_rows
        weight = weight.index_copy(0, torch.tensor(indices, dtype=torch.long), adapter.tensor(key))
    return np.ascontiguousarray(weight.numpy(), dtype=np.float32)


def _factors(adapter: Adapter, lora: LoraFactors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    magnitude = adapter.tensor(lora.magnitude_key) if lora.magnitude_key else None
    return adapter.tensor(lora.a_key), adapter.tensor(lora.b_key), magnitude


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, lora: LoraFactors) -> torch.Tensor:
    """s·BA laid out like the base weight."""
    delta = lora_b @ lora_a
    if lora.embedding or lora.fan_in_fan_out:
        delta = delta.T
    return delta * lora.scaling


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
               magnitude: torch.Tensor | None, lora: LoraFactors) -> torch.Tensor:
    delta = lora_delta(lora_a, lora_b, lora)
    if magnitude is None:
        return weight + delta
    # DoRA: the norm is taken per output feature of W + Δ in the [out, in] view, as peft's
    # get_weight_norm does on the unmerged base weight.
    merged = weight + delta
    out_in = merged.T if lora.fan_in_fan_out else merged
    weight_norm = torch.linalg.norm(out_in, dim=1)
    factor = (magnitude / weight_norm).view(-1, 1)
    if lora.fan_in_fan_out:
        factor = factor.T
    return factor * merged
