"""Calibrated quantization: run the model in torch on calibration text, one decoder layer at a time,
and quantize every linear (and the embedding / tied lm_head) with quantize/calibrate.py's GPTQ.

Sequential, as GPTQ does it: the inputs of layer i+1 are the outputs of the already-quantized
layer i, so each layer compensates the error of those before it. Only one layer's activations are
alive at a time (tokens x hidden), and each linear's H = X^T X is K x K.

The results are codes and scales per HF weight name; the write loop packs them into MLC's tensors
(`calibrated_outputs`) in place of its own rounding.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from quantize.calibrate import Calibrated, concat_rows, gptq_quantize, output_error, pack
from quantize.schemes import zero_point
from quantize.spec import SourceParam

BUILTIN = "builtin"
SEQ_LEN = 512  # tokens per calibration sequence
MAX_TOKENS = 16384  # more calibration text is cut here (time grows linearly with it)
# The tied embedding is also the lm_head. H of the lm_head (final hidden states) drives GPTQ; the
# looked-up vectors have no activations, so a multiple of the identity (EMBED_DAMP x mean diag H)
# stands for them (measured on SmolLM2: see bench/quality.py --sweep).
EMBED_DAMP = 0.1
RECIPE_VERSION = 1


def builtin_text() -> str:
    return resources.files("personalize").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def read_calibration_text(spec: str) -> tuple[str, str]:
    """(text, label) for `--calibrate builtin|FILE`."""
    from ingest.errors import IngestError

    if spec in ("", BUILTIN):
        return builtin_text(), BUILTIN
    path = Path(spec).expanduser()
    if not path.is_file():
        raise IngestError("calibration text not found", path=str(path),
                          hint="pass a UTF-8 text file, or `--calibrate builtin` for the text shipped with personalize")
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text.split()) < 50:
        raise IngestError("calibration text is too short (fewer than 50 words)", path=str(path),
                          hint="use a few thousand words of text like the model's use (its chat format is best)")
    return text, path.name


@dataclass
class CalibrationResult:
    """Codes/scales per HF weight name, plus what to record in the lineage."""

    weights: dict[str, Calibrated]
    recipe: dict
    seconds: float = 0.0
    layer_errors: list[dict] = field(default_factory=list)


def calibration_tokens(tokenizer, text: str, max_positions: int | None = None) -> list[list[int]]:
    """The text tokenized once and cut into SEQ_LEN sequences (at most the model's context; the
    last partial one kept if long enough)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "longer than the maximum length": we cut it here
    try:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    finally:
        transformers.logging.set_verbosity(verbosity)
    seq = min(SEQ_LEN, max_positions or SEQ_LEN)
    seqs = [ids[i : i + seq] for i in range(0, len(ids), seq)]
    return [s for s in seqs if len(s) >= 32] or [ids]


def calibrate_model(model, tokenizer, text: str, *, model_dtype: str, bits: int, group_size: int,
                    quantize_embedding: bool = True, label: str = BUILTIN,
                    progress: Callable[[str], None] | None = None) -> CalibrationResult:
    """Quantize a loaded transformers llama-family model (float32, modified in place) layer by layer."""
    import torch

    t0 = time.perf_counter()
    seqs = calibration_tokens(tokenizer, text, getattr(model.config, "max_position_embeddings", None))
    n_tokens = sum(len(s) for s in seqs)
    say = progress or (lambda _m: None)
    core = model.model
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict[str, Calibrated] = {}
    errors: list[dict] = []

    def quantize_linears(names: list[str], h: torch.Tensor) -> None:
        """Linears that share an input (q/k/v, gate/up) are quantized as one row-stacked matrix:
        rows are independent given H, and one column sweep is cheaper than three."""
        mods = [model.get_submodule(n) for n in names]
        w = torch.cat([m.weight.data for m in mods])
        cal = gptq_quantize(w, h, model_dtype, bits, group_size)
        deq = cal.dequantize()
        errors.append({"name": ",".join(names), "calibrated": output_error(w, deq, h, model_dtype),
                       "mlc": output_error(w, mlc_dequantized(w.numpy(), model_dtype, bits, group_size), h,
                                           model_dtype)})
        start = 0
        for name, m in zip(names, mods):
            rows = m.weight.shape[0]
            part = Calibrated(cal.codes[start : start + rows], cal.scales[start : start + rows], bits, group_size)
            m.weight.data.copy_(torch.from_numpy(deq[start : start + rows]))  # later layers see the quantized model
            out[f"{name}.weight"] = part
            start += rows

    with torch.no_grad():
        embed = core.embed_tokens
        hidden = [embed(torch.tensor([s])) for s in seqs]
        rotary = core.rotary_emb
        for i, layer in enumerate(core.layers):
            t_layer = time.perf_counter()
            prefix = f"model.layers.{i}"
            groups = {  # linears that share one input, and so one H
                "attn_in": [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")],
                "attn_out": [f"{prefix}.self_attn.o_proj"],
                "mlp_in": [f"{prefix}.mlp.{p}" for p in ("gate_proj", "up_proj")],
                "mlp_out": [f"{prefix}.mlp.down_proj"],
            }
            modules = {name: model.get_submodule(name) for names in groups.values() for name in names}
            hs: dict[str, torch.Tensor] = {}
            hooks = []
            for key, names in groups.items():
                def hook(_mod, args, key=key):
                    x = args[0].reshape(-1, args[0].shape[-1]).double()
                    hs[key] = hs[key] + x.T @ x if key in hs else x.T @ x
                hooks.append(modules[names[0]].register_forward_pre_hook(hook))
            _run_layer(layer, rotary, hidden)
            for h in hooks:
                h.remove()
            for key, names in groups.items():
                quantize_linears(names, hs[key] / n_tokens)
            hidden = _run_layer(layer, rotary, hidden)  # outputs of the quantized layer
            say(f"layer {i + 1}/{len(core.layers)} calibrated ({time.perf_counter() - t_layer:.1f} s)")
        if quantize_embedding:
            final = [core.norm(x) for x in hidden]
            xs = torch.cat([x.reshape(-1, x.shape[-1]) for x in final]).double()
            h_head = xs.T @ xs / n_tokens
            if tied:
                w = embed.weight.data
                cal = gptq_quantize(w, h_head, model_dtype, bits, group_size, damp=EMBED_DAMP)
                out["model.embed_tokens.weight"] = cal
                say("embedding / tied lm_head calibrated")
            else:
                # untied: the embedding has no input activations (plain rounding with the range
                # search); the lm_head is a linear on the final hidden states
                out["model.embed_tokens.weight"] = gptq_quantize(embed.weight.data, None, model_dtype, bits,
                                                                 group_size)
                out["lm_head.weight"] = gptq_quantize(model.lm_head.weight.data, h_head, model_dtype, bits,
                                                      group_size)
                say("embedding and lm_head calibrated")
    recipe = {"method": "gptq-groupwise", "version": RECIPE_VERSION, "text": label,
              "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "tokens": n_tokens,
              "sequences": len(seqs), "seq_len": max(len(s) for s in seqs), "damp": 0.01, "embed_damp": EMBED_DAMP,
              "codes": f"0..{2**bits - 1}", "order": "natural (no act-order)", "sequential": True}
    return CalibrationResult(out, recipe, time.perf_counter() - t0, errors)


def mlc_dequantized(weight: np.ndarray, model_dtype: str, bits: int, group_size: int) -> np.ndarray:
    """MLC's own rounding of `weight`, dequantized (the baseline each layer's error is compared to)."""
    from quantize.group import group_quantize

    q_weight, q_scale = group_quantize(weight, model_dtype, bits, group_size)
    epu = 32 // bits
    shifts = np.arange(epu, dtype=np.uint32) * np.uint32(bits)
    codes = ((q_weight[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(q_weight.shape[0], -1)
    codes = codes[:, : weight.shape[1]].astype(np.float32)
    scales = np.repeat(q_scale.astype(np.float32), group_size, axis=1)[:, : weight.shape[1]]
    return (codes - zero_point(bits)) * scales


def _run_layer(layer, rotary, hidden: list) -> list:
    """One decoder layer on every calibration sequence (sdpa with no mask is causal)."""
    import torch

    outs = []
    for x in hidden:
        pos = torch.arange(x.shape[1])[None]
        cos_sin = rotary(x, pos)
        y = layer(x, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
        outs.append(y[0] if isinstance(y, tuple) else y)
    return outs


def load_for_calibration(model_dir: Path, adapter_dir: Path | None = None):
    """(model, tokenizer): the fine-tune in float32 with sdpa attention (adapters merged by peft)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    has_own = adapter_dir is not None and any((adapter_dir / f).is_file()
                                              for f in ("tokenizer.json", "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir if has_own else model_dir))
    return model, tokenizer


def calibrated_outputs(result: CalibrationResult, scheme) -> Callable[[SourceParam], list | None]:
    """The write loop's hook: a parameter's library tensors from the calibrated codes, or None
    (not calibrated: the loop quantizes it as usual)."""

    def outputs(param: SourceParam) -> list[tuple[str, np.ndarray]] | None:
        if not scheme.quantizes(param.role) or not all(s in result.weights for s in param.sources):
            return None
        cal = concat_rows([result.weights[s] for s in param.sources])
        if tuple(cal.codes.shape) != tuple(param.shape):
            return None
        q_weight, q_scale = pack(cal, transpose=scheme.transposes(param.role))
        return [(f"{param.module}.q_weight", q_weight), (f"{param.module}.q_scale", q_scale)]

    return outputs


@dataclass
class CalibratedRun:
    """What `add --calibrate` hands the write loop (`outputs`) and records in the lineage."""

    result: CalibrationResult
    outputs: Callable[[SourceParam], list | None]
    options: dict


def calibrate_artifact(spec: str, plan, model_dir: Path, adapter_dir: Path | None, *, scales: str = "mlc",
                       log: Callable[[str], None] | None = None) -> CalibratedRun:
    """Run the calibration for `add --calibrate SPEC` on the model `plan` converts."""
    from personalize_errors import UserError
    from quantize import get_scheme

    scheme = get_scheme(plan.quantization)
    if scales != "mlc":
        raise UserError("--calibrate chooses its own per-group scales", hint="drop --scales, or drop --calibrate")
    if not scheme.is_quantized:
        raise UserError(f"{scheme.name} is not quantized: there is nothing to calibrate",
                        hint="use a group-quantized scheme such as q4f16_1, or drop --calibrate")
    text, label = read_calibration_text(spec)
    say = log or (lambda _m: None)
    say(f"calibrating {plan.quantization} on {label} (layer by layer, in torch) ...")
    model, tokenizer = load_for_calibration(model_dir, adapter_dir)
    n_params = sum(int(p.numel()) for p in model.parameters())
    result = calibrate_model(model, tokenizer, text, model_dtype=scheme.model_dtype, bits=scheme.bits,
                             group_size=scheme.group_size, quantize_embedding=scheme.quantize_embedding,
                             label=label, progress=say)
    del model
    cal = sum(e["calibrated"] for e in result.layer_errors)
    mlc = sum(e["mlc"] for e in result.layer_errors)
    ratios = sorted(e["calibrated"] / e["mlc"] for e in result.layer_errors if e["mlc"] > 0)
    quality = {"output_error_vs_mlc_total": round(cal / mlc, 4) if mlc else None,
               "output_error_vs_mlc_median": round(ratios[len(ratios) // 2], 4) if ratios else None,
               "linears": len(result.layer_errors),
               "measured_on": "calibration text, per input group (qkv, o, gate_up, down): sum of ||X (W - Q)^T||^2, calibrated / MLC rounding"}
    options = {"scales": "calibrated",
               "calibration": {**result.recipe, "seconds": round(result.seconds, 2), "params": n_params,
                               "seconds_per_billion_params": round(result.seconds / max(n_params, 1) * 1e9, 1),
                               "quality": quality}}
    say(f"calibrated in {result.seconds:.0f} s; output error on the calibration text "
        f"{quality['output_error_vs_mlc_total']} x MLC's rounding")
    return CalibratedRun(result, calibrated_outputs(result, scheme), options)


def calibrate_prepared(prepared, options, log: Callable[[str], None] | None = None):
    """The add pipeline's one calibration hook: run the calibration on the prepared source and
    return (prepared, options, run) where the write loop takes the calibrated tensors (and reuses
    nothing: another artifact's tensors were rounded another way) and the lineage records the recipe."""
    import dataclasses

    run = calibrate_artifact(options.calibrate, prepared.plan, prepared.plan.model.path, prepared.adapter_dir,
                             scales=options.scales, log=log)
    steps = dataclasses.replace(prepared.weight_steps, reuse=None, precomputed=run.outputs)
    annotate_first = prepared.annotate_lineage

    def annotate(lineage: dict, weights: dict) -> None:
        if annotate_first:
            annotate_first(lineage, weights)
        lineage["quantization_options"] = run.options

    prepared = dataclasses.replace(prepared, weight_steps=steps, annotate_lineage=annotate)
    return prepared, dataclasses.replace(options, scales=run.options["scales"]), run


# Measured with bench/quality.py (SmolLM2-135M-Instruct, held-out GPL-3 text, 14 x 512-token windows,
# mean KL against the bf16 model): 3-bit with groups of 40 is far worse than 4-bit on small models.
THREE_BIT_MEASURED = {"q3f16_1": "perplexity 441 (bf16: 18.1), mean KL 3.34, top-1 11%",
                      "calibrated": "perplexity 62, KL 1.30, top-1 43%",
                      "q4f16_1": "perplexity 28.0 / KL 0.53, with --calibrate 23.0 / 0.29"}


def three_bit_warning(quantization: str, *, calibrated: bool) -> str | None:
    """What `add` prints before a 3-bit conversion: the measured quality, and the better choice."""
    from quantize import SCHEMES

    scheme = SCHEMES.get(quantization)
    if scheme is None or scheme.bits != 3:
        return None
    m = THREE_BIT_MEASURED
    return (f"{quantization} loses much of a small model's quality: on SmolLM2-135M (held-out text) "
            f"q3f16_1 measured {m['q3f16_1']}, with --calibrate {m['calibrated']}; q4f16_1 "
            f"{m['q4f16_1']} (bench/quality.py). " +
            ("Prefer q4f16_1 --calibrate." if calibrated else "Add --calibrate, or prefer q4f16_1 --calibrate."))
