"""MLC artifact format constants in one place (file names, caps, versions)."""

from __future__ import annotations

TENSOR_CACHE_JSON = "tensor-cache.json"  # current name (TVM/MLC since 2025-09)
NDARRAY_CACHE_JSON = "ndarray-cache.json"  # legacy name, identical content, for older runtimes
TENSOR_CACHE_B16_JSON = "tensor-cache-b16.json"  # fp32 records rewritten as raw bf16; unused by runtimes
SHARD_PREFIX = "params_shard"
SHARD_FORMAT = "raw-shard"
DEFAULT_SHARD_CAP_BYTES = 32 * 2**20
ENCODE_FORMATS = ("raw", "f32-to-bf16")

MLC_CHAT_CONFIG_JSON = "mlc-chat-config.json"
MLC_CHAT_CONFIG_VERSION = "0.1.0"
LINEAGE_JSON = "personalize.json"
MODEL_CARD = "README.md"

# gen_config copies these (in this order) when they sit next to config.json.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)
