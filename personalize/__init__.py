"""personalize: Hugging Face fine-tunes and LoRA adapters -> MLC LLM artifacts on a fixed library."""

from __future__ import annotations


def load(name_or_dir, device: str = "cpu", lib=None, **kwargs):
    """Load an artifact (registry name or directory) into its compiled library; see runtime.model.load."""
    from personalize.runtime import load as _load  # imported lazily: the CLI starts without TVM

    return _load(name_or_dir, device=device, lib=lib, **kwargs)


__all__ = ["load"]
