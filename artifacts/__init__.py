"""Write, read and verify MLC-compatible artifact directories (tensor cache, chat config, lineage, card).

A leaf package: it never imports `personalize`; architecture facts arrive as data.
"""

from .artifact import Artifact
from .chat_config import build_chat_config, choose_conv_template, read_chat_config, write_chat_config
from .conv_detect import detect_conv_template
from .conv_template import NAMED_TEMPLATES, named_template
from .conversation import Conversation, prompt_token_ids, render_prompt
from .errors import ArtifactError, ChatConfigError, ConvTemplateError, LineageError, TensorCacheError
from .files import read_json_object, sha256_file, write_json_atomic, write_text_atomic
from .lineage import file_map, hash_file, read_lineage, write_lineage
from .model_card import render_model_card
from .tensor_cache import TensorCache, TensorCacheWriter, iter_tensors, load_tensor, param_stats, read_tensor_cache
from .verify import Problem, verify_artifact

__all__ = [
    "Artifact", "ArtifactError", "ChatConfigError", "ConvTemplateError", "Conversation", "LineageError",
    "NAMED_TEMPLATES", "Problem", "TensorCache", "TensorCacheError", "TensorCacheWriter", "build_chat_config",
    "choose_conv_template", "detect_conv_template", "file_map", "hash_file", "iter_tensors", "load_tensor",
    "named_template", "param_stats", "prompt_token_ids", "read_chat_config", "read_json_object",
    "read_lineage", "read_tensor_cache", "render_model_card", "render_prompt", "sha256_file",
    "verify_artifact", "write_chat_config", "write_json_atomic", "write_lineage", "write_text_atomic",
]  # fmt: skip
