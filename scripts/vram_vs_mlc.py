"""Our VRAM estimate (artifacts/deploy.py) against the vram_required_MB MLC publishes, per prebuilt library.

For every catalogued library of a supported architecture in one directory, an artifact of the base's
published shapes is described exactly as `add` writes it (tests/shaped_models.py: records from the
architecture definition, no weight bytes) with the library's limits, and its estimate is compared.

    PYTHONPATH=.:tests python scripts/vram_vs_mlc.py [--directory v0_2_86/base]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from artifacts.deploy import estimate_vram  # noqa: E402
from catalog import libraries  # noqa: E402
from tests.shaped_models import hf_config, write_paper_artifact  # noqa: E402

SUPPORTED = {"llama", "mistral", "qwen2"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", default="v0_2_86/base")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vram-"))
    print(f"{'base':28s} {'quant':8s} {'ours MiB':>9s} {'MLC MB':>9s}  diff")
    for lib in libraries():
        if lib.directory != args.directory or lib.model_type not in SUPPORTED:
            continue
        art = write_paper_artifact(tmp / lib.file, hf_config(lib.base_model), lib.quantization)
        chat = json.loads((art / "mlc-chat-config.json").read_text())
        est = estimate_vram(chat, json.loads((art / "tensor-cache.json").read_text()))
        diff = 100 * (est.total_mib / lib.vram_required_MB - 1)
        print(f"{lib.base_model:28s} {lib.quantization:8s} {est.total_mib:9.2f} {lib.vram_required_MB:9.2f} {diff:+6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
