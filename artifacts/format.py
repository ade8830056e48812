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

# Files of a Hugging Face model directory that an artifact reads or carries.
CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"

# Every tokenizer-side file of a model directory, in the order they are copied. The first six are
# MLC gen_config's list (it copies exactly these, in this order, into tokenizer_files).
TOKENIZER_FILES = (
    TOKENIZER_MODEL,
    TOKENIZER_JSON,
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    TOKENIZER_CONFIG_JSON,
    "special_tokens_map.json",
    CHAT_TEMPLATE_JINJA,
    "chat_template.json",
    GENERATION_CONFIG_JSON,
)
MLC_TOKENIZER_FILES = TOKENIZER_FILES[:6]
