"""Quality of personalize's quantization (with and without --calibrate) against llama.cpp, on held-out text.

    python bench/quality.py --model SMOLLM2_DIR --work /tmp/q [--eval FILE] [--noise 0.1]
                            [--skip-llamacpp] [--specs q4f16_1,q4f16_1+range,q4f16_1+cal,...]

Everything is scored on the same tokens and windows (bench/_quality_eval.py: the HF tokenizer,
llama-perplexity's 512-token chunks, positions 256..510), against one reference: transformers in
float32 on the source weights.
- personalize rows: `personalize add MODEL -q Q [--scales S | --calibrate builtin] --output ... --no-eval`,
  then transformers on the artifact's dequantized weights ((code - zero) * scale, unfused; equal to
  our compiled library's logits, tests/test_calibration.py). The calibration text is the built-in
  one (personalize/data/calibration.txt); the default held-out text is /usr/share/common-licenses/GPL-3
  (on every Debian/Ubuntu machine, and not the calibration text).
- llama.cpp rows (built from the llama-cpp-python sdist, bench/_llamacpp.py): convert_hf_to_gguf f16,
  llama-quantize, then `llama-perplexity --kl-divergence` against a base file in llama.cpp's own
  format that holds OUR reference's log-probs and the HF tokens (the two tokenizers disagree on
  whitespace, quality-speed.md), so llama.cpp's own code scores exactly the same tokens.
`--noise SIGMA` first writes a copy of the model with gaussian noise (SIGMA x each tensor's std)
added to every 2-D weight, so the weights are continuous rather than on SmolLM2's Q4_1 grid, and
measures that copy (its own bf16 weights are the reference).
Bits/weight: tensor bytes x 8 / parameter count (shards for personalize; GGUF tensor data for llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _quality_eval import (CTX, FIRST_SCORED, artifact_state_dict, compare, load_model,  # noqa: E402
                           load_state, scored_log_probs, windows)

DEFAULT_EVAL = "/usr/share/common-licenses/GPL-3"
DEFAULT_SPECS = ("q4f16_1", "q4f16_1+range", "q4f16_1+cal", "q4f32_1", "q4f32_1+cal", "q3f16_1", "q3f16_1+cal")
LLAMACPP_TYPES = ("Q8_0", "Q4_0", "Q4_0-pure", "Q4_K_M", "Q3_K_M")


def n_params(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def noisy_copy(model_dir: Path, out: Path, sigma: float, seed: int = 0) -> Path:
    """The model with N(0, (sigma * std(W))^2) added to every 2-D weight, saved in bf16."""
    import torch
    from safetensors.torch import load_file, save_file

    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, out / f.name)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            if t.ndim == 2:
                t32 = t.float()
                t = (t32 + torch.randn(t32.shape, generator=gen) * (sigma * float(t32.std()))).to(t.dtype)
            tensors[name] = t.contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def personalize_row(spec: str, model_dir: Path, work: Path, ref, chunks, params: int, env: dict) -> dict:
    quant, _, mode = spec.partition("+")
    out = work / "art" / f"{model_dir.name}-{spec.replace('+', '-')}"
    argv = [sys.executable, "-m", "personalize", "add", str(model_dir), "-q", quant, "--output", str(out),
            "--no-eval", "--quiet", "--force"]
    if mode == "cal":
        argv += ["--calibrate", "builtin"]
    elif mode:
        argv += ["--scales", mode]
    t0 = time.perf_counter()
    if not (out / "personalize.json").is_file():
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    lineage = json.loads((out / "personalize.json").read_text())
    model = load_model(model_dir)
    load_state(model, artifact_state_dict(out, model_dir))
    m = compare(ref, scored_log_probs(model, chunks), chunks)
    size = sum(f.stat().st_size for f in out.glob("params_shard_*.bin"))
    cal = (lineage.get("quantization_options") or {}).get("calibration") or {}
    return {"tool": "personalize", "scheme": quant + (f" --{'calibrate' if mode == 'cal' else 'scales ' + mode}"
                                                      if mode else ""),
            "bpw": size * 8 / params, "ppl": m.ppl, "kl": m.kl, "top1": m.top1, "tokens": m.tokens,
            "add_s": round(wall, 1), "calibration_s": cal.get("seconds"),
            "calibration_s_per_b": cal.get("seconds_per_billion_params"),
            "calib_output_error_vs_mlc": (cal.get("quality") or {}).get("output_error_vs_mlc_total")}


# -- llama.cpp ---------------------------------------------------------------------------------
def write_kld_base(path: Path, chunks: list[list[int]], ref: list[np.ndarray], n_vocab: int) -> None:
    """llama-perplexity's --kl-divergence-base file (tools/perplexity/perplexity.cpp): "_logits_",
    n_ctx, n_vocab, n_chunk, the tokens, then per chunk and scored position 2 floats (scale, min
    log-prob) + n_vocab uint16 log-probs, padded to nv = 2*((n_vocab+1)/2) + 4 uint16."""
    nv = 2 * ((n_vocab + 1) // 2) + 4
    with open(path, "wb") as f:
        f.write(b"_logits_")
        f.write(struct.pack("<Iii", CTX, n_vocab, len(chunks)))
        f.write(np.asarray([t for c in chunks for t in c], dtype=np.int32).tobytes())
        for lp in ref:
            lp = lp.astype(np.float32)
            mx = lp.max(axis=1, keepdims=True)
            mn = np.maximum(lp.min(axis=1, keepdims=True), mx - 16)
            lse = np.log(np.exp(lp - mx).sum(axis=1, keepdims=True))
            min_log_prob = (mn - mx - lse).astype(np.float32)
            scale = ((mx - mn) / 65535.0).astype(np.float32)
            q = np.where(lp > mn, np.rint((lp - mn) / np.where(scale > 0, scale, 1)), 0).astype(np.uint16)
            block = np.zeros((lp.shape[0], nv), np.uint16)
            header = np.concatenate([scale, min_log_prob], axis=1).astype(np.float32).view(np.uint16)
            block[:, :4] = header
            block[:, 4 : 4 + n_vocab] = q
            f.write(block.tobytes())


def gguf_tensor_bytes(path: Path, gguf_py: Path) -> int:
    sys.path.insert(0, str(gguf_py))
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def llamacpp_rows(model_dir: Path, work: Path, ref, chunks, params: int, n_vocab: int, threads: int) -> list[dict]:
    from _llamacpp import ensure_llamacpp

    lc = ensure_llamacpp(targets=("llama-quantize", "llama-perplexity"))
    g = work / "gguf" / model_dir.name
    g.mkdir(parents=True, exist_ok=True)
    f16 = g / "f16.gguf"
    # the converter's own gguf-py; sentencepiece must be importable too (pip install sentencepiece,
    # or a --target dir on PYTHONPATH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(lc.gguf_py), os.environ.get("PYTHONPATH"))
                                                      if p))
    if not f16.is_file():
        subprocess.run([sys.executable, str(lc.convert_script), str(model_dir), "--outtype", "f16", "--outfile",
                        str(f16)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = work / f"{model_dir.name}-ref.kld"
    write_kld_base(base, chunks, ref, n_vocab)
    rows = []
    for t in ("F16",) + LLAMACPP_TYPES:
        path = f16 if t == "F16" else g / f"{t}.gguf"
        if not path.is_file():
            argv = [str(lc.tool("llama-quantize"))] + (["--pure"] if t.endswith("-pure") else []) + \
                   [str(f16), str(path), t.replace("-pure", ""), str(threads)]
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = subprocess.run([str(lc.tool("llama-perplexity")), "-m", str(path), "-c", str(CTX), "-t", str(threads),
                              "--kl-divergence-base", str(base), "--kl-divergence"], capture_output=True, text=True)
        log = run.stdout + run.stderr
        (work / f"{model_dir.name}-{t}.log").write_text(log)
        ppl = _grab(r"Mean PPL\(Q\)\s*:\s*([\d.]+)", log)
        kld = _grab(r"Mean\s+KLD:\s*([-\d.]+)", log)
        top = _grab(r"Same top p:\s*([\d.]+)", log)
        rows.append({"tool": "llama.cpp", "scheme": t, "bpw": gguf_tensor_bytes(path, lc.gguf_py) * 8 / params,
                     "ppl": ppl, "kl": kld, "top1": top / 100 if top is not None else None,
                     "tokens": len(chunks) * (CTX - 1 - FIRST_SCORED)})
    return rows


def _grab(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def table(rows: list[dict], ref_ppl: float, title: str) -> str:
    out = [f"### {title}", "", f"reference (bf16 weights, transformers fp32) PPL {ref_ppl:.3f}; "
           f"{rows[0]['tokens'] if rows else 0} scored tokens", "",
           "| tool | scheme | bits/weight | PPL | mean KL vs bf16 | top-1 vs bf16 | calibration s per 1e9 params |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v, s: "–" if v is None else s.format(v)  # noqa: E731
        out.append(f"| {r['tool']} | {r['scheme']} | {r['bpw']:.3f} | {f(r['ppl'], '{:.2f}')} | "
                   f"{f(r['kl'], '{:.4f}')} | {f(r['top1'] and 100 * r['top1'], '{:.1f}%')} | "
                   f"{f(r.get('calibration_s_per_b'), '{:.0f}')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path(os.environ.get(
        "PERSONALIZE_SMOLLM2", "~/.cache/personalize-models/SmolLM2-135M-Instruct")).expanduser())
    ap.add_argument("--eval", type=Path, default=Path(DEFAULT_EVAL), help="held-out text (not the calibration text)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS), help="QUANT[+range|+mse|+cal], comma-separated")
    ap.add_argument("--noise", type=float, default=0.0, help="measure a noisy copy (sigma x tensor std) instead")
    ap.add_argument("--max-chunks", type=int, default=0)
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model.resolve()
    if args.noise:
        model_dir = noisy_copy(model_dir, work / f"{model_dir.name}-noise{args.noise}", args.noise)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = args.eval.read_text(encoding="utf-8")
    from personalize.calibration import builtin_text

    if text.strip() in builtin_text() or builtin_text().strip() in text:
        raise SystemExit("the held-out text overlaps the calibration text")
    chunks = windows(tok, text)
    if args.max_chunks:
        chunks = chunks[: args.max_chunks]
    model = load_model(model_dir)
    params = n_params(model)
    n_vocab = model.config.vocab_size
    ref = scored_log_probs(model, chunks)
    ref_ppl = compare(ref, ref, chunks).ppl
    del model
    env = dict(os.environ, PERSONALIZE_HOME=str(work / "home"))
    rows = []
    for spec in [s for s in args.specs.split(",") if s]:
        row = personalize_row(spec, model_dir, work, ref, chunks, params, env)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.skip_llamacpp:
        for row in llamacpp_rows(model_dir, work, ref, chunks, params, n_vocab, args.threads):
            rows.append(row)
            print(json.dumps(row), flush=True)
    title = f"{model_dir.name} on {args.eval.name} ({len(chunks)} x {CTX}-token windows)"
    saved = work / f"{model_dir.name}-rows.json"
    if saved.is_file():  # rows of earlier runs on the same model and text (e.g. llama.cpp added later)
        old = json.loads(saved.read_text())
        old_tokens = old["rows"][0]["tokens"] if old.get("rows") else None
        if rows and old.get("eval", str(args.eval)) == str(args.eval) and old_tokens == rows[0]["tokens"]:
            done = {(r["tool"], r["scheme"]) for r in rows}
            rows = [r for r in old["rows"] if (r["tool"], r["scheme"]) not in done] + rows
    rows.sort(key=lambda r: (r["tool"] != "llama.cpp", r["tool"], r["scheme"]))
    md = table(rows, ref_ppl, title)
    (work / f"{model_dir.name}-table.md").write_text(md + "\n")
    saved.write_text(json.dumps({"ref_ppl": ref_ppl, "eval": str(args.eval), "tokens": rows[0]["tokens"] if rows
                                 else 0, "rows": rows}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
