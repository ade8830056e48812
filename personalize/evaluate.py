"""The equivalence gate: the artifact, run through the fixed library, against the PyTorch reference.

Reference = the source model (base + adapter through peft for adapters), unquantized, float32.
Measured on a fixed set of chat prompts plus a short text: mean KL(reference || artifact) per
token, top-1 agreement, and the perplexity of both on the text. For the q0 quantizations the
numbers must be tight - a miss there is a conversion or merge bug, not quantization noise - so the
add fails and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from personalize_errors import UserError

GATE_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a neural network is.",
    "List three prime numbers.",
)
GATE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital and most populous city of France. "
    "Water boils at one hundred degrees Celsius at sea level, and the Earth orbits the Sun once a year."
)
MAX_GATE_TOKENS = 256
# For q0 schemes: the only differences left are float rounding of the stored weights.
Q0_LIMITS = {"q0f32": (2e-3, 0.97), "q0bf16": (2e-2, 0.93), "q0f16": (2e-2, 0.93)}


class EquivalenceError(UserError):
    """The artifact does not behave like the PyTorch model (the equivalence gate failed)."""


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, art: np.ndarray) -> dict[str, float]:
    """Per-position KL(ref || art) and top-1 agreement."""
    lp, lq = log_softmax(ref), log_softmax(art)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return {"kl_sum": float(kl.sum()), "positions": int(kl.shape[0]),
            "top1_equal": int((ref.argmax(-1) == art.argmax(-1)).sum())}


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    lp = log_softmax(logits[:-1])
    nll = -lp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float(np.exp(nll.mean()))


def gate_sequences(model) -> list[list[int]]:
    """Token ids of the gate inputs: each prompt in the artifact's own chat format, then the text."""
    seqs = [model.prompt_ids([{"role": "user", "content": prompt}]) for prompt in GATE_PROMPTS]
    seqs.append(model.encode(GATE_TEXT))
    # stay inside what the library accepts in one prefill (tiny test models have short windows)
    limits = [model.chat_config.get(k) for k in ("context_window_size", "prefill_chunk_size", "sliding_window_size")]
    cap = min([MAX_GATE_TOKENS] + [int(x) for x in limits if isinstance(x, int) and x > 0])
    return [ids[:cap] for ids in seqs]


def load_reference(reference_dir: Path, adapter_dir: Path | None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        emb = _adapter_vocab_size(adapter_dir)
        if emb is not None and emb != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(emb)
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.eval()
    return model


def _adapter_vocab_size(adapter_dir: Path) -> int | None:
    from ingest.adapter import load_adapter

    return load_adapter(adapter_dir).resized_vocab_size()


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return out.logits[0].float().numpy()


def run_gate(artifact_dir: Path, reference_dir: Path, adapter_dir: Path | None, quantization: str,
             device: str = "cpu", log: Callable[[str], None] | None = None) -> dict:
    from artifacts import Artifact
    from personalize.runtime import load as load_artifact

    if log:
        log("equivalence gate: loading the artifact into its library (built once per library key)")
    model = load_artifact(Artifact(artifact_dir), device=device)  # as is: `add` gates a staged directory
    seqs = gate_sequences(model)
    reference = load_reference(Path(reference_dir), adapter_dir)
    totals = {"kl_sum": 0.0, "positions": 0, "top1_equal": 0}
    ppl = {}
    for i, ids in enumerate(seqs):
        ref = reference_logits(reference, ids)
        art = model.logits(ids)
        for k, v in compare_logits(ref, art).items():
            totals[k] += v
        if i == len(seqs) - 1:
            ppl = {"reference": perplexity(ref, ids), "artifact": perplexity(art, ids)}
    result = {
        "mean_kl": totals["kl_sum"] / totals["positions"],
        "top1_agreement": totals["top1_equal"] / totals["positions"],
        "perplexity_reference": ppl["reference"],
        "perplexity_artifact": ppl["artifact"],
        "positions": totals["positions"],
        "prompts": len(GATE_PROMPTS),
        "reference": "transformers float32" + (" + peft adapter" if adapter_dir else ""),
        "device": device,
    }
    limits = Q0_LIMITS.get(quantization)
    if limits is not None:
        max_kl, min_top1 = limits
        result["limits"] = {"max_mean_kl": max_kl, "min_top1_agreement": min_top1}
        if result["mean_kl"] > max_kl or result["top1_agreement"] < min_top1:
            raise EquivalenceError(
                f"equivalence gate failed for {quantization}: mean KL {result['mean_kl']:.4g} (limit {max_kl}), "
                f"top-1 agreement {result['top1_agreement']:.3f} (limit {min_top1})",
                path=str(adapter_dir or reference_dir),
                hint="this is a conversion/merge bug, not quantization noise; please report it "
                     "(--no-eval skips the gate)")
    if log:
        log(f"equivalence gate: mean KL {result['mean_kl']:.4g}, top-1 {result['top1_agreement']:.3f}, "
            f"ppl {ppl['reference']:.2f} -> {ppl['artifact']:.2f}")
    return result


def make_gate(*, reference_dir: Path, adapter_dir: Path | None, device: str, log=None):
    """The gate `add` runs on the staged artifact, for any source kind."""
    def gate(artifact_dir: Path, lineage: dict) -> dict:
        return run_gate(artifact_dir, reference_dir, adapter_dir, lineage["quantization"], device=device, log=log)

    return gate


def reevaluate(artifact_dir: Path, device: str = "cpu", log: Callable[[str], None] | None = None) -> dict:
    """`personalize eval`: rerun the gate against the reference the lineage names; record the numbers
    in personalize.json and the model card."""
    from artifacts import Artifact

    from .finalize import record_eval

    lineage = dict(Artifact(artifact_dir).lineage)
    source = lineage.get("source", {})
    if source.get("kind") == "adapter":
        reference, adapter = Path(lineage["base"]["path"]), Path(source["path"])
    else:
        reference, adapter = Path(source.get("path", "")), None
    for p in (reference, adapter):
        if p is not None and not p.is_dir():
            raise EquivalenceError(f"the reference model is gone: {p}", path=str(p),
                                   hint="eval needs the source (and base) the artifact was made from")
    result = run_gate(artifact_dir, reference, adapter, lineage["quantization"], device=device, log=log)
    record_eval(artifact_dir, lineage, result)
    return result
