"""The new architectures' parameter lists equal MLC's own compiled libraries' (no weights written).

The expected lists are the `params` that MLC's prebuilt WebGPU libraries embed
(tests/data/prebuilt/metadata/*.json, extracted from mlc-ai/binary-mlc-llm-libs v0_2_48). Ours are
built from the architecture definition with the published config of each base (values as in
mlc-llm's model_preset.py), for both the converter's list and our graph's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalize.arch import get_architecture
from personalize.library.build import graph_params
from quantize import get_scheme, library_params

METADATA = Path(__file__).parent / "data" / "prebuilt" / "metadata"

GEMMA2_2B = {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "attention_bias": False,
             "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "head_dim": 256,
             "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "intermediate_size": 9216,
             "max_position_embeddings": 8192, "num_attention_heads": 8, "num_hidden_layers": 26,
             "num_key_value_heads": 4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
             "sliding_window": 4096, "vocab_size": 256000}


def phi3_config(vocab: int, heads: int, kv: int, prf: float, tied: bool) -> dict:
    pairs = int(3072 // heads * prf) // 2
    return {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
            "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "vocab_size": vocab,
            "partial_rotary_factor": prf, "tie_word_embeddings": tied, "hidden_act": "silu",
            "rope_scaling": {"long_factor": [1.0] * pairs, "short_factor": [1.0] * pairs, "type": "longrope"}}


def decoder(model_type: str, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, tied: bool,
            **extra) -> dict:
    return {"model_type": model_type, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab, "tie_word_embeddings": tied,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096, **extra}


LLAMA32_1B = decoder("llama", 2048, 8192, 16, 32, 8, 128256, True, head_dim=64, rope_theta=500000.0,
                     rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                   "original_max_position_embeddings": 8192, "rope_type": "llama3"})
QWEN2_05B = decoder("qwen2", 896, 4864, 24, 14, 2, 151936, True)

CASES = {
    "Llama-3.2-1B-Instruct-q0f16-ctx4k_cs1k-webgpu.json": LLAMA32_1B,
    "Llama-3.2-1B-Instruct-q0f32-ctx4k_cs1k-webgpu.json": LLAMA32_1B,
    "TinyLlama-1.1B-Chat-v0.4-q0f32-ctx2k_cs1k-webgpu.json": decoder("llama", 2048, 5632, 22, 32, 4, 32000, False),
    "Mistral-7B-Instruct-v0.3-q4f16_1-ctx4k_cs1k-webgpu.json": decoder("mistral", 4096, 14336, 32, 32, 8, 32768,
                                                                         False),
    "Qwen2-0.5B-Instruct-q4f16_1-ctx4k_cs1k-webgpu.json": QWEN2_05B,
    "Qwen2-0.5B-Instruct-q0f32-ctx4k_cs1k-webgpu.json": QWEN2_05B,
    "Qwen2-1.5B-Instruct-q4f32_1-ctx4k_cs1k-webgpu.json": decoder("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2-7B-Instruct-q4f32_1-ctx4k_cs1k-webgpu.json": decoder("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
    "gemma-2-2b-it-q4f16_1-ctx4k_cs1k-webgpu.json": GEMMA2_2B,
    "gemma-2-2b-it-q4f32_1-ctx4k_cs1k-webgpu.json": GEMMA2_2B,
    "Phi-3.5-mini-instruct-q4f32_1-ctx4k_cs1k-webgpu.json": phi3_config(32064, 32, 32, 1.0, tied=False),
    "Phi-4-mini-instruct-q4f32_1-ctx4k_cs1k-webgpu.json": phi3_config(200064, 24, 8, 0.75, tied=True),
}


@pytest.mark.parametrize("metadata_file", list(CASES))
def test_parameter_list_equals_mlc_prebuilt_library(metadata_file):
    meta = json.loads((METADATA / metadata_file).read_text())
    hf = CASES[metadata_file]
    arch = get_architecture(hf["model_type"])
    config = arch.library_config(hf)
    assert meta["model_type"] == arch.model_type
    want = [{"name": p["name"], "shape": p["shape"], "dtype": p["dtype"]} for p in meta["params"]]
    ours = [p.to_json() for p in library_params(arch.source_params(config), get_scheme(meta["quantization"]))]
    assert ours == want  # names, shapes (symbolic vocab_size where MLC has it), dtypes, order
    assert graph_params(config, meta["quantization"], "cuda") == want
    lay = arch.layout(config)
    assert meta["kv_cache"] == {"num_hidden_layers": lay.layers, "num_attention_heads": lay.heads,
                                "num_key_value_heads": lay.kv_heads, "head_dim": lay.head_dim}


def test_gemma2_limits_equal_the_prebuilt_library():
    """MLC's gemma2 caps the context at the sliding window and attends to all of it (sliding -1)."""
    meta = json.loads((METADATA / "gemma-2-2b-it-q4f16_1-ctx4k_cs1k-webgpu.json").read_text())
    mc = get_architecture("gemma2").library_config(GEMMA2_2B).model_config
    assert mc["context_window_size"] == meta["context_window_size"] == 4096
    assert mc.get("sliding_window_size", -1) == meta["sliding_window_size"] == -1


def test_qwen3_parameter_list_from_mlc_model():
    """No Qwen3 library is vendored: the list is spelled out from mlc-llm's qwen3_model.py (module
    declaration order: c_attn, o_proj, q_norm, k_norm; mlp; two norms) for Qwen3-0.6B's config."""
    hf = {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
          "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000, "vocab_size": 151936, "tie_word_embeddings": True, "hidden_act": "silu",
          "attention_bias": False, "max_position_embeddings": 40960}
    arch = get_architecture("qwen3")
    config = arch.library_config(hf)
    got = [p.to_json() for p in library_params(arch.source_params(config), get_scheme("q4f16_1"))]
    layer = "model.layers.0"
    want_head = [
        {"name": "model.embed_tokens.q_weight", "shape": [151936, 128], "dtype": "uint32"},
        {"name": "model.embed_tokens.q_scale", "shape": [151936, 32], "dtype": "float16"},
        {"name": f"{layer}.self_attn.c_attn.q_weight", "shape": [(16 + 16) * 128, 128], "dtype": "uint32"},
        {"name": f"{layer}.self_attn.c_attn.q_scale", "shape": [4096, 32], "dtype": "float16"},
        {"name": f"{layer}.self_attn.o_proj.q_weight", "shape": [1024, 256], "dtype": "uint32"},
        {"name": f"{layer}.self_attn.o_proj.q_scale", "shape": [1024, 64], "dtype": "float16"},
        {"name": f"{layer}.self_attn.q_norm.weight", "shape": [128], "dtype": "float16"},
        {"name": f"{layer}.self_attn.k_norm.weight", "shape": [128], "dtype": "float16"},
        {"name": f"{layer}.mlp.gate_up_proj.q_weight", "shape": [6144, 128], "dtype": "uint32"},
        {"name": f"{layer}.mlp.gate_up_proj.q_scale", "shape": [6144, 32], "dtype": "float16"},
        {"name": f"{layer}.mlp.down_proj.q_weight", "shape": [1024, 384], "dtype": "uint32"},
        {"name": f"{layer}.mlp.down_proj.q_scale", "shape": [1024, 96], "dtype": "float16"},
        {"name": f"{layer}.input_layernorm.weight", "shape": [1024], "dtype": "float16"},
        {"name": f"{layer}.post_attention_layernorm.weight", "shape": [1024], "dtype": "float16"},
    ]
    assert got[:14] == want_head
    assert len(got) == 2 + 28 * 12 + 1 and got[-1]["name"] == "model.norm.weight"  # tied: no lm_head
    assert graph_params(config, "q4f16_1", "cuda") == got
    assert list(config.model_config) == [  # Qwen3Config's field order, as gen_config writes model_config
        "hidden_act", "hidden_size", "intermediate_size", "attention_bias", "num_attention_heads",
        "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_theta", "vocab_size",
        "tie_word_embeddings", "context_window_size", "prefill_chunk_size", "tensor_parallel_shards", "head_dim",
        "dtype", "max_batch_size", "weight_block_size"]


def test_gemma3_text_parameter_list_from_mlc_model():
    """No gemma-3 library is vendored: spelled out from mlc-llm's gemma3_model.py (decoder under
    language_model.model, q/k/v unfused, q_norm and k_norm, four layer norms) for gemma-3-1b-it."""
    hf = {"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
          "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000, "rope_local_base_freq": 10000, "sliding_window": 512, "vocab_size": 262144,
          "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768}
    arch = get_architecture("gemma3_text")
    config = arch.library_config(hf)
    got = [(p["name"], p["shape"]) for p in (q.to_json() for q in library_params(arch.source_params(config),
                                                                                  get_scheme("q4f16_1")))]
    a, layer = "language_model.model.layers.0.self_attn", "language_model.model.layers.0"
    assert got[:18] == [
        ("language_model.model.embed_tokens.q_weight", ["vocab_size", 144]),
        ("language_model.model.embed_tokens.q_scale", ["vocab_size", 36]),
        (f"{a}.q_proj.q_weight", [1024, 144]), (f"{a}.q_proj.q_scale", [1024, 36]),
        (f"{a}.k_proj.q_weight", [256, 144]), (f"{a}.k_proj.q_scale", [256, 36]),
        (f"{a}.v_proj.q_weight", [256, 144]), (f"{a}.v_proj.q_scale", [256, 36]),
        (f"{a}.o_proj.q_weight", [1152, 128]), (f"{a}.o_proj.q_scale", [1152, 32]),
        (f"{a}.q_norm.weight", [256]), (f"{a}.k_norm.weight", [256]),
        (f"{layer}.mlp.gate_up_proj.q_weight", [13824, 144]), (f"{layer}.mlp.gate_up_proj.q_scale", [13824, 36]),
        (f"{layer}.mlp.down_proj.q_weight", [1152, 864]), (f"{layer}.mlp.down_proj.q_scale", [1152, 216]),
        (f"{layer}.input_layernorm.weight", [1152]), (f"{layer}.post_attention_layernorm.weight", [1152])]
    assert len(got) == 2 + 26 * 18 + 1 and got[-1][0] == "language_model.model.norm.weight"
    assert graph_params(config, "q4f16_1", "cuda") == [q.to_json() for q in library_params(
        arch.source_params(config), get_scheme("q4f16_1"))]
    # MLC's Gemma3Config: context = max(sliding window, 8192), the sliding window kept for the runtime
    assert (config.model_config["context_window_size"], config.model_config["sliding_window_size"]) == (8192, 512)
