"""Prefill and decode speed: the compiled library vs transformers eager, in one process.

    # CPU, SmolLM2 at three quantizations (artifacts made with `personalize add`):
    python bench/runtime.py --artifact A_q0f32 --artifact A_q4f32_1 --artifact A_q4f16_1 \
        --hf /work/cache/smollm2 --device cpu
    # CUDA (library compiled elsewhere, runtime-only TVM; the HF model is rebuilt from the artifact's
    # dequantized weights, so no bf16 checkpoint has to travel):
    TVM_USE_RUNTIME_LIB=1 python bench/runtime.py --artifact A_q4f16_1 --lib lib.so --device cuda \
        --hf-config DIR_WITH_CONFIG_JSON

Both sides run greedy decoding with a KV cache on the same prompt; decode speed is the mean over
`--decode-tokens` steps after the prompt. Prints one JSON document (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = ("Explain in a few sentences why the sky is blue, and then say what the capital of France is. "
          "Keep the answer short and friendly, and do not use lists or headings in it please. ")


def prompt_ids(tokenizer_dir: Path, n: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = tok.encode(PROMPT * 8, add_special_tokens=False).ids
    return ids[:n]


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def bench_tvm(artifact: Path, device: str, lib: str | None, ids: list[int], decode_tokens: int, repeats: int):
    import personalize

    t = time.perf_counter()
    model = personalize.load(artifact, device=device, lib=lib)
    load_s = time.perf_counter() - t
    eng = model.engine
    best_prefill, best_decode, tokens = 1e9, 1e9, []
    for _ in range(repeats):
        eng.reset()
        t = time.perf_counter()
        logits = eng.prefill(ids)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        tok = int(np.argmax(logits))
        tokens = [tok]
        t = time.perf_counter()
        for _ in range(decode_tokens):
            tok = int(np.argmax(eng.decode(tok)))
            tokens.append(tok)
        best_decode = min(best_decode, (time.perf_counter() - t) / decode_tokens)
    return {"load_s": round(load_s, 3), "prefill_tok_s": len(ids) / best_prefill,
            "decode_tok_s": 1.0 / best_decode, "decode_ms": best_decode * 1e3, "tokens": tokens[:16],
            "lib": str(model.lib_path)}


def hf_from_artifact(artifact: Path, config_dir: Path, dtype, device: str):
    """transformers model with the artifact's (dequantized) weights: same shapes and math as the source."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    h, kv = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // h
    state = {}
    doc = json.loads((artifact / "tensor-cache.json").read_text())
    q_scales = {}
    raw = {}
    for shard in doc["records"]:
        data = np.fromfile(artifact / shard["dataPath"], dtype=np.uint8)
        for r in shard["records"]:
            b = data[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            if r["dtype"] == "float32" and r["format"] == "f32-to-bf16":
                arr = (b.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = b.view(np.dtype(r["dtype"]) if r["dtype"] != "bfloat16" else np.uint16)
            raw[r["name"]] = arr.reshape(r["shape"])
    for name, arr in raw.items():
        if name.endswith(".q_scale"):
            q_scales[name[: -len(".q_scale")]] = arr
    for name, arr in raw.items():
        if name.endswith(".q_scale"):
            continue
        if name.endswith(".q_weight"):  # q4 NK: (code - 7) * scale, element r of a word at bits 4r
            module = name[: -len(".q_weight")]
            codes = ((arr[:, :, None] >> (np.arange(8, dtype=np.uint32) * 4)) & 15).reshape(arr.shape[0], -1)
            scale = np.repeat(q_scales[module].astype(np.float32), 32, axis=1)
            w = (codes[:, : scale.shape[1]].astype(np.float32) - 7) * scale
            name, arr = module + ".weight", w
        t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32)))
        if ".qkv_proj." in name:
            for part, w in zip(("q_proj", "k_proj", "v_proj"), torch.split(t, [h * d, kv * d, kv * d])):
                state[name.replace("qkv_proj", part)] = w
        elif ".gate_up_proj." in name:
            g, u = torch.chunk(t, 2)
            state[name.replace("gate_up_proj", "gate_proj")] = g
            state[name.replace("gate_up_proj", "up_proj")] = u
        else:
            state[name] = t
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # rebuild the non-persistent buffers
    return model.to(device=device, dtype=dtype).eval()


def bench_hf(model, device: str, ids: list[int], decode_tokens: int, repeats: int):
    import torch

    best_prefill, best_decode, tokens = 1e9, 1e9, []
    x = torch.tensor([ids], device=device)
    with torch.inference_mode():
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            out = model(x, use_cache=True)
            tok = int(out.logits[0, -1].argmax())
            best_prefill = min(best_prefill, time.perf_counter() - t)
            past, tokens = out.past_key_values, [tok]
            t = time.perf_counter()
            for _ in range(decode_tokens):
                out = model(torch.tensor([[tok]], device=device), past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = int(out.logits[0, -1].argmax())
                tokens.append(tok)
            best_decode = min(best_decode, (time.perf_counter() - t) / decode_tokens)
    return {"prefill_tok_s": len(ids) / best_prefill, "decode_tok_s": 1.0 / best_decode,
            "decode_ms": best_decode * 1e3, "tokens": tokens[:16]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", action="append", required=True, type=Path)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--lib", help="compiled library (one artifact only); default: the cached one")
    ap.add_argument("--hf", type=Path, help="the HF model dir the artifacts came from")
    ap.add_argument("--hf-config", type=Path, help="dir with config.json: rebuild the HF model from the "
                    "first artifact's dequantized weights instead of --hf")
    ap.add_argument("--hf-dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU, "
                    "float16 on CUDA)")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default on CPU: measure 1 and all cores, compare against the faster; "
                         "on a busy 2-core machine torch's 2-thread decode can collapse while 1 thread does not)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    all_threads = torch.get_num_threads()
    if args.threads:
        thread_counts = [args.threads]
    elif args.device == "cpu" and all_threads > 1:
        thread_counts = [1, all_threads]
    else:
        thread_counts = [all_threads]
    ids = prompt_ids(args.artifact[0], args.prompt_tokens)
    result = {"device": args.device, "prompt_tokens": len(ids), "decode_tokens": args.decode_tokens,
              "torch_threads": thread_counts, "runs": {}}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    for art in args.artifact:
        quant = json.loads((art / "mlc-chat-config.json").read_text())["quantization"]
        result["runs"][f"tvm_{quant}"] = bench_tvm(art, args.device, args.lib, ids, args.decode_tokens,
                                                  args.repeats)
        print(json.dumps({quant: result["runs"][f"tvm_{quant}"]}), file=sys.stderr, flush=True)
    dtype_name = args.hf_dtype or ("float16" if args.device == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.hf_config:
        hf = hf_from_artifact(args.artifact[0], args.hf_config, dtype, args.device)
        label = f"transformers_eager_{dtype_name}_dequantized"
    else:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(args.hf, dtype=dtype, attn_implementation="eager")
        hf = hf.to(args.device).eval()
        label = f"transformers_eager_{dtype_name}"
    hf_runs = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        hf_runs[f"{label}_threads{threads}"] = bench_hf(hf, args.device, ids, args.decode_tokens, args.repeats)
    # the reference is torch's best setting (per metric), so the ratios never flatter the library
    ref = {key: max(run[key] for run in hf_runs.values()) for key in ("prefill_tok_s", "decode_tok_s")}
    result["transformers_best"] = ref
    for name, run in list(result["runs"].items()):
        if name.startswith("tvm_"):
            run["prefill_vs_transformers"] = run["prefill_tok_s"] / ref["prefill_tok_s"]
            run["decode_vs_transformers"] = run["decode_tok_s"] / ref["decode_tok_s"]
    result["runs"].update(hf_runs)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
