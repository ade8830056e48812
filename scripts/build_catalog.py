"""Build catalog/webllm_libraries.json: MLC's prebuilt WebGPU model libraries that WebLLM loads.

Sources (nothing is invented here):
  * WebLLM's own `prebuiltAppConfig` and `modelVersion`, read from the published npm tarballs of
    @mlc-ai/web-llm (`npm pack`, then lib/index.js evaluated by node): which library files exist in
    which directory of mlc-ai/binary-mlc-llm-libs, the records that use them (vram_required_MB,
    low_resource_required, required_features, overrides), and which npm versions load which directory.
  * BASES below: the hyper-parameters compiled into each library that its metadata does not carry,
    written by hand from the base model's published config.json on the Hugging Face Hub (the Hub is not
    reachable from the build machine). Shapes of the v0_2_48 bases are cross-checked by
    tests/test_catalog.py against the metadata embedded in MLC's real libraries
    (tests/data/prebuilt/metadata/).
  * The compiled context window / prefill chunk: from the file name (`-ctx4k_cs1k`); for names without
    `ctx` (`_cs1k`, v0_2_83 and later) binary-mlc-llm-libs' compile_wasm.py runs gen_config without
    --context-window-size, so the compiled value is the base's max_position_embeddings ("the context
    window size does not do anything because it has become a runtime thing", compile_wasm.py). The
    context MLC's own records run the library with (their `overrides.context_window_size`) is recorded
    separately as `context_window_size`: that is what a fine-tune's record should use too.

Usage:
  python scripts/build_catalog.py [--tarballs DIR] [--output catalog/webllm_libraries.json]
`--tarballs DIR` reuses mlc-ai-web-llm-<version>.tgz files already in DIR (else `npm pack` fetches them).
Needs `node` (to evaluate WebLLM's config object literally instead of parsing JavaScript by regex).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# npm versions read. 0.2.46 is only the lower boundary of the v0_2_48 range (it loads v0_2_43).
WEBLLM_VERSIONS = ["0.2.46", "0.2.51", "0.2.79", "0.2.80", "0.2.81", "0.2.82", "0.2.83", "0.2.84", "0.2.85",
                   "0.2.86"]
# Library directories catalogued (older ones predate the ndarray/tensor-cache formats personalize writes).
DIRECTORIES = ["v0_2_48", "v0_2_80", "v0_2_83/base", "v0_2_84/base", "v0_2_86/base"]
LIB_URL_PREFIX = "https://raw.githubusercontent.com/mlc-ai/binary-mlc-llm-libs/main/web-llm-models/"

# Llama 3.1/3.2's llama3 RoPE scaling, as in their config.json.
LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
LLAMA32_SCALING = {**LLAMA31_SCALING, "factor": 32.0}
# Phi-3.5 / Phi-4-mini use LongRoPE; only its type and original window are recorded and compared: the
# per-dimension long/short factor lists (48 each) are compiled in too, but their published values could not
# be read from the Hub when this was written, and a wrong list here would refuse every real fine-tune.
LONGROPE = {"rope_type": "longrope", "original_max_position_embeddings": 4096}


def _cfg(hidden, inter, layers, heads, kv, vocab, *, eps, theta, tie, max_pos, head_dim=None, scaling=None,
         sliding=None, **extra):
    """The compiled-in hyper-parameters of one base, from its published config.json."""
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim or hidden // heads,
            "vocab_size": vocab, "norm_eps": eps, "rope_theta": theta, "rope_scaling": scaling,
            "sliding_window": sliding, "tie_word_embeddings": tie, "max_position_embeddings": max_pos, **extra}


QWEN2_05B = _cfg(896, 4864, 24, 14, 2, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=32768)
QWEN2_15B = _cfg(1536, 8960, 28, 12, 2, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=32768)
QWEN2_7B = _cfg(3584, 18944, 28, 28, 4, 152064, eps=1e-6, theta=1e6, tie=False, max_pos=32768)
GEMMA2_EXTRA = dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256)

# Library file stem -> (Hub id of the base, model_type, compiled-in config). Qwen2 configs say
# sliding_window 32768 with use_sliding_window false: no sliding window is compiled, hence None.
BASES: dict[str, tuple[str, str, dict]] = {
    "Llama-3.2-1B-Instruct": ("meta-llama/Llama-3.2-1B-Instruct", "llama",
                              _cfg(2048, 8192, 16, 32, 8, 128256, eps=1e-5, theta=500000.0, tie=True,
                                   max_pos=131072, head_dim=64, scaling=LLAMA32_SCALING)),
    "Llama-3.2-3B-Instruct": ("meta-llama/Llama-3.2-3B-Instruct", "llama",
                              _cfg(3072, 8192, 28, 24, 8, 128256, eps=1e-5, theta=500000.0, tie=True,
                                   max_pos=131072, head_dim=128, scaling=LLAMA32_SCALING)),
    "Llama-3_1-8B-Instruct": ("meta-llama/Llama-3.1-8B-Instruct", "llama",
                              _cfg(4096, 14336, 32, 32, 8, 128256, eps=1e-5, theta=500000.0, tie=False,
                                   max_pos=131072, scaling=LLAMA31_SCALING)),
    "Llama-3-8B-Instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "llama",
                            _cfg(4096, 14336, 32, 32, 8, 128256, eps=1e-5, theta=500000.0, tie=False, max_pos=8192)),
    "Llama-2-7b-chat-hf": ("meta-llama/Llama-2-7b-chat-hf", "llama",
                           _cfg(4096, 11008, 32, 32, 32, 32000, eps=1e-5, theta=10000.0, tie=False, max_pos=4096)),
    "Llama-2-13b-chat-hf": ("meta-llama/Llama-2-13b-chat-hf", "llama",
                            _cfg(5120, 13824, 40, 40, 40, 32000, eps=1e-5, theta=10000.0, tie=False, max_pos=4096)),
    "TinyLlama-1.1B-Chat-v0.4": ("TinyLlama/TinyLlama-1.1B-Chat-v0.4", "llama",
                                 _cfg(2048, 5632, 22, 32, 4, 32003, eps=1e-5, theta=10000.0, tie=False,
                                      max_pos=2048)),
    "TinyLlama-1.1B-Chat-v1.0": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "llama",
                                 _cfg(2048, 5632, 22, 32, 4, 32000, eps=1e-5, theta=10000.0, tie=False,
                                      max_pos=2048)),
    "SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "llama",
                              _cfg(576, 1536, 30, 9, 3, 49152, eps=1e-5, theta=100000.0, tie=True, max_pos=8192)),
    "SmolLM2-360M-Instruct": ("HuggingFaceTB/SmolLM2-360M-Instruct", "llama",
                              _cfg(960, 2560, 32, 15, 5, 49152, eps=1e-5, theta=100000.0, tie=True, max_pos=8192)),
    "SmolLM2-1.7B-Instruct": ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "llama",
                              _cfg(2048, 8192, 24, 32, 32, 49152, eps=1e-5, theta=130000.0, tie=True, max_pos=8192)),
    "Mistral-7B-Instruct-v0.3": ("mistralai/Mistral-7B-Instruct-v0.3", "mistral",
                                 _cfg(4096, 14336, 32, 32, 8, 32768, eps=1e-5, theta=1000000.0, tie=False,
                                      max_pos=32768)),
    "Qwen2-0.5B-Instruct": ("Qwen/Qwen2-0.5B-Instruct", "qwen2", QWEN2_05B),
    "Qwen2-1.5B-Instruct": ("Qwen/Qwen2-1.5B-Instruct", "qwen2", QWEN2_15B),
    "Qwen2-7B-Instruct": ("Qwen/Qwen2-7B-Instruct", "qwen2", QWEN2_7B),
    "Qwen2.5-3B-Instruct": ("Qwen/Qwen2.5-3B-Instruct", "qwen2",
                            _cfg(2048, 11008, 36, 16, 2, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=32768)),
    "Qwen3-0.6B": ("Qwen/Qwen3-0.6B", "qwen3",
                   _cfg(1024, 3072, 28, 16, 8, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=40960, head_dim=128)),
    "Qwen3-1.7B": ("Qwen/Qwen3-1.7B", "qwen3",
                   _cfg(2048, 6144, 28, 16, 8, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=40960, head_dim=128)),
    "Qwen3-4B": ("Qwen/Qwen3-4B", "qwen3",
                 _cfg(2560, 9728, 36, 32, 8, 151936, eps=1e-6, theta=1e6, tie=True, max_pos=40960, head_dim=128)),
    "Qwen3-8B": ("Qwen/Qwen3-8B", "qwen3",
                 _cfg(4096, 12288, 36, 32, 8, 151936, eps=1e-6, theta=1e6, tie=False, max_pos=40960, head_dim=128)),
    "Qwen3-4B-Instruct-2507": ("Qwen/Qwen3-4B-Instruct-2507", "qwen3",
                               _cfg(2560, 9728, 36, 32, 8, 151936, eps=1e-6, theta=5e6, tie=True, max_pos=262144,
                                    head_dim=128)),
    "Qwen3-4B-Thinking-2507": ("Qwen/Qwen3-4B-Thinking-2507", "qwen3",
                               _cfg(2560, 9728, 36, 32, 8, 151936, eps=1e-6, theta=5e6, tie=True, max_pos=262144,
                                    head_dim=128)),
    "gemma-2-2b-it": ("google/gemma-2-2b-it", "gemma2",
                      _cfg(2304, 9216, 26, 8, 4, 256000, eps=1e-6, theta=10000.0, tie=True, max_pos=8192,
                           head_dim=256, sliding=4096, **GEMMA2_EXTRA)),
    "gemma-2-2b-jpn-it": ("google/gemma-2-2b-jpn-it", "gemma2",
                          _cfg(2304, 9216, 26, 8, 4, 256000, eps=1e-6, theta=10000.0, tie=True, max_pos=8192,
                               head_dim=256, sliding=4096, **GEMMA2_EXTRA)),
    "gemma-2-9b-it": ("google/gemma-2-9b-it", "gemma2",
                      _cfg(3584, 14336, 42, 16, 8, 256000, eps=1e-6, theta=10000.0, tie=True, max_pos=8192,
                           head_dim=256, sliding=4096, **GEMMA2_EXTRA)),
    "gemma3-1b-it": ("google/gemma-3-1b-it", "gemma3_text",
                     _cfg(1152, 6912, 26, 4, 1, 262144, eps=1e-6, theta=1000000.0, tie=True, max_pos=32768,
                          head_dim=256, sliding=512, rope_local_base_freq=10000.0, sliding_window_pattern=6,
                          query_pre_attn_scalar=256)),
    # Phi-3's config.json says sliding_window 2047 / 262144, but MLC's Phi3Config has no such field and its
    # libraries compile none (sliding_window_size -1 in the Phi-3.5 metadata): None, as for Qwen2.
    "Phi-3-mini-4k-instruct": ("microsoft/Phi-3-mini-4k-instruct", "phi3",
                               _cfg(3072, 8192, 32, 32, 32, 32064, eps=1e-5, theta=10000.0, tie=False, max_pos=4096)),
    "Phi-3.5-mini-instruct": ("microsoft/Phi-3.5-mini-instruct", "phi3",
                              _cfg(3072, 8192, 32, 32, 32, 32064, eps=1e-5, theta=10000.0, tie=False,
                                   max_pos=131072, scaling=LONGROPE)),
    "Phi-4-mini-instruct": ("microsoft/Phi-4-mini-instruct", "phi3",
                            _cfg(3072, 8192, 32, 24, 8, 200064, eps=1e-5, theta=10000.0, tie=True, max_pos=131072,
                                 head_dim=128, scaling=LONGROPE, partial_rotary_factor=0.75)),
}
# Library dims MLC declares symbolic ("vocab_size"), so any vocabulary loads (seen in the v0_2_48
# metadata for llama, mistral and gemma2; qwen2 and phi3 have a concrete vocab there).
SYMBOLIC_VOCAB = {"llama": True, "mistral": True, "gemma2": True, "qwen2": False, "phi3": False,
                  "qwen3": False, "gemma3_text": True}

LIB_NAME = re.compile(r"^(?P<stem>.+?)-(?P<quant>q\d(?:f16|f32|bf16)(?:_\d)?)"
                      r"(?:-(?P<kind>ctx|sw)(?P<ctx>\d+k?))?_cs(?P<cs>\d+k?)(?P<batch>_batch\d+)?-webgpu\.wasm$")


def _size(text: str) -> int:
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def fetch_tarballs(versions: list[str], into: Path) -> dict[str, Path]:
    out = {}
    for version in versions:
        tgz = into / f"mlc-ai-web-llm-{version}.tgz"
        if not tgz.is_file():
            subprocess.run(["npm", "pack", f"@mlc-ai/web-llm@{version}", "--silent"], cwd=into, check=True,
                           stdout=subprocess.DEVNULL)
        out[version] = tgz
    return out


def _config_block(index_js: str) -> str:
    """The JavaScript from `const modelVersion = ...` to the end of `const prebuiltAppConfig = {...}`."""
    start = index_js.index("const modelVersion = ")
    brace = index_js.index("{", index_js.index("const prebuiltAppConfig = "))
    depth = 0
    for pos in range(brace, len(index_js)):
        depth += {"{": 1, "}": -1}.get(index_js[pos], 0)
        if depth == 0:
            return index_js[start:pos + 1]
    raise ValueError("unbalanced prebuiltAppConfig")


def read_app_config(tgz: Path) -> dict:
    """{modelVersion, modelLibURLPrefix, prebuiltAppConfig} of one npm tarball, evaluated by node."""
    with tarfile.open(tgz) as tar:
        index_js = tar.extractfile("package/lib/index.js").read().decode()
    script = ("const ModelType = {LLM: 0, embedding: 1, VLM: 2};\n" + _config_block(index_js) +
              "\nprocess.stdout.write(JSON.stringify({modelVersion, modelLibURLPrefix, prebuiltAppConfig}));\n")
    done = subprocess.run(["node", "-"], input=script, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def version_ranges(configs: dict[str, dict]) -> dict[str, dict]:
    """Directory -> {first, last, versions_read} over the npm versions read (ordered)."""
    out: dict[str, dict] = {}
    for version in sorted(configs, key=_version_key):
        directory = configs[version]["modelVersion"]
        entry = out.setdefault(directory, {"first": version, "last": version, "versions_read": []})
        entry["last"] = version
        entry["versions_read"].append(version)
    return out


def build(configs: dict[str, dict]) -> dict:
    ranges = version_ranges(configs)
    libraries: dict[str, dict] = {}
    skipped: set[str] = set()
    for version in sorted(configs, key=_version_key):
        cfg = configs[version]
        directory = cfg["modelVersion"]
        if directory not in DIRECTORIES:
            continue
        for rec in cfg["prebuiltAppConfig"]["model_list"]:
            url = rec["model_lib"]
            file = url.rsplit("/", 1)[-1]
            m = LIB_NAME.match(file)
            if not m or m["stem"] not in BASES or m["batch"]:
                skipped.add(f"{directory}/{file}")
                continue
            key = f"{directory}/{file}"
            lib = libraries.get(key)
            if lib is None:
                lib = libraries[key] = _library(directory, file, url, m, ranges[directory])
            record = {"model_id": rec["model_id"], "model": rec["model"],
                      "vram_required_MB": rec.get("vram_required_MB"),
                      "low_resource_required": rec.get("low_resource_required"),
                      "required_features": rec.get("required_features", []),
                      "overrides": rec.get("overrides", {})}
            known = {r["model_id"]: r for r in lib["records"]}
            if rec["model_id"] in known:
                known[rec["model_id"]]["webllm_versions"].append(version)
            else:
                lib["records"].append({**record, "webllm_versions": [version]})
    for lib in libraries.values():
        _summarize(lib)
    return {
        "format": "personalize-webllm-catalog/1",
        "source": "npm @mlc-ai/web-llm prebuiltAppConfig of " + ", ".join(sorted(configs, key=_version_key)),
        "lib_url_prefix": LIB_URL_PREFIX,
        "webllm_ranges": {d: ranges[d] for d in DIRECTORIES if d in ranges},
        "libraries": [libraries[k] for k in sorted(libraries)],
        "skipped_libraries": sorted(skipped),
    }


def _library(directory: str, file: str, url: str, m: re.Match, webllm: dict) -> dict:
    hub, model_type, config = BASES[m["stem"]]
    sliding = m["kind"] == "sw"
    compiled_ctx = _size(m["ctx"]) if m["ctx"] and not sliding else (-1 if sliding else config["max_position_embeddings"])
    return {
        "library": f"{directory}/{file}",
        "directory": directory,
        "file": file,
        "url": url,
        "base_model": m["stem"],
        "base_hub_id": hub,
        "model_type": model_type,
        "quantization": m["quant"],
        "compiled_context_window_size": compiled_ctx,
        "compiled_context_from": "file name" if m["ctx"] else "base config.json (compile_wasm.py sets none)",
        "compiled_sliding_window_size": _size(m["ctx"]) if sliding else -1,
        "prefill_chunk_size": _size(m["cs"]),
        "webllm": {**webllm, "range": f">={webllm['first']} <={webllm['last']}",
                   "weights_manifest": "ndarray-cache.json" if _version_key(webllm["last"]) <= (0, 2, 79)
                   else "tensor-cache.json"},
        "symbolic_vocab": SYMBOLIC_VOCAB[model_type],
        "config": config,
        "records": [],
    }


def _summarize(lib: dict) -> None:
    """The library's own record (MLC's conversion of its base) gives VRAM, features and context."""
    stem_id = f"{lib['base_model']}-{lib['quantization']}-MLC"
    own = [r for r in lib["records"] if r["model_id"] == stem_id] or \
          [r for r in lib["records"] if r["model_id"].startswith(stem_id)] or lib["records"]
    own.sort(key=lambda r: -int(r["overrides"].get("context_window_size", 0)))
    ref = own[0]
    lib["reference_record"] = ref["model_id"]
    lib["vram_required_MB"] = ref["vram_required_MB"]
    lib["low_resource_required"] = ref["low_resource_required"]
    listed = sorted({f for r in lib["records"] for f in r["required_features"]})
    lib["required_features_listed_by_mlc"] = listed
    # An f16 library's shaders use f16 whether or not MLC's record says so (e.g. Llama-3.2-1B q4f16_1).
    lib["required_features"] = sorted(set(listed) | ({"shader-f16"} if "f16" in lib["quantization"] else set()))
    lib["context_window_size"] = int(ref["overrides"].get("context_window_size", lib["compiled_context_window_size"]))


def dump(doc: dict) -> str:
    """JSON with one library per line: small, and a rebuild diffs line by line."""
    head = {k: v for k, v in doc.items() if k not in ("libraries", "skipped_libraries")}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "libraries": [')
    lines += [f"  {json.dumps(lib)}," for lib in doc["libraries"]]
    lines[-1] = lines[-1].rstrip(",")
    lines.append(" ],")
    lines.append(f' "skipped_libraries": {json.dumps(doc["skipped_libraries"])}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarballs", type=Path, help="directory with (or for) mlc-ai-web-llm-<version>.tgz")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent.parent / "catalog" / "webllm_libraries.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        where = args.tarballs or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        tarballs = fetch_tarballs(WEBLLM_VERSIONS, where)
        configs = {v: read_app_config(p) for v, p in tarballs.items()}
    doc = build(configs)
    args.output.write_text(dump(doc))
    print(f"{len(doc['libraries'])} libraries, {len(doc['skipped_libraries'])} skipped -> {args.output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
