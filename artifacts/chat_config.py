"""mlc-chat-config.json exactly as MLC LLM's gen_config writes it.

Field set and order follow `MLCChatConfig` (mlc_llm/protocol/mlc_chat_config.py); values follow
`interface/gen_config.py`: generation defaults from generation_config.json then config.json
(first non-null wins, raw values), system defaults last, tokenizer files in MLC's order,
tokenizer_info as the C++ DetectTokenizerInfo reads tokenizer.json, active_vocab_size from
len(AutoTokenizer). The conversation template is chosen from the fine-tune's own chat template.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from .conv_detect import Detection, detect_conv_template, tokenizer_facts, tokenizer_render
from .conv_template import named_template
from .errors import ChatConfigError, ConvTemplateError
from .files import read_json_object, write_json_atomic
from .format import (
    CHAT_TEMPLATE_JINJA,
    CONFIG_JSON,
    GENERATION_CONFIG_JSON,
    MLC_CHAT_CONFIG_JSON,
    MLC_CHAT_CONFIG_VERSION,
    MLC_TOKENIZER_FILES,
    TOKENIZER_CONFIG_JSON,
    TOKENIZER_JSON,
    TOKENIZER_MODEL,
)

log = logging.getLogger(__name__)

# MLC_CHAT_SYSTEM_DEFAULT, applied to whatever the model's files leave null.
SYSTEM_DEFAULTS: dict[str, Any] = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "temperature": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_p": 1.0,
}
# MLCChatConfig fields that start out null, so generation_config.json / config.json may fill them.
_FILLABLE = ("temperature", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_p",
             "pad_token_id", "bos_token_id", "eos_token_id", "embedding_metadata")
CHAT_TEMPLATE_FILE = CHAT_TEMPLATE_JINJA  # not in tokenizer_files: MLC does not know it


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json_object(path, error=ChatConfigError, missing_ok=True, hint="fix or remove the file")


_SCRATCH: tempfile.TemporaryDirectory | None = None


def _scratch_dir() -> str:
    """A directory for files the caller copies into the artifact (a converted tokenizer.json);
    removed when the process exits, so nothing is left behind in /tmp."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="personalize-tok-")
    return _SCRATCH.name


def detect_tokenizer_info(tokenizer_json: Path) -> dict[str, Any]:
    """MLC's DetectTokenizerInfo on tokenizer.json (C++ cpp/tokenizers/tokenizers.cc), as a dict."""
    info = {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": False,
            "strip_space_in_decode": False}
    doc = _read_json(tokenizer_json)
    if doc is None:
        return info
    decoder = doc.get("decoder")
    if isinstance(decoder, dict):
        members = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
        for member in members:  # every member is examined: the last ByteLevel/ByteFallback wins
            kind = member.get("type")
            if kind == "ByteLevel":
                info["token_postproc_method"] = "byte_level"
            elif kind == "ByteFallback":
                info["token_postproc_method"] = "byte_fallback"
        for member in members:
            if (member.get("type") == "Strip" and member.get("content") == " " and member.get("start") == 1
                    and member.get("stop") == 0):
                info["strip_space_in_decode"] = True
                break
    normalizer = doc.get("normalizer")
    if isinstance(normalizer, dict):
        members = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
        for member in members:
            if member.get("type") == "Prepend" and member.get("prepend") == "\u2581":
                info["prepend_space_in_encode"] = True
                break
    return info


def _check_duplicated_added_tokens(tokenizer_json: Path) -> None:
    doc = _read_json(tokenizer_json) or {}
    seen: set[str] = set()
    for token in doc.get("added_tokens", []):
        content = token.get("content")
        if content in seen:
            raise ChatConfigError(f"tokenizer.json has the added token {content!r} twice", path=tokenizer_json,
                                  hint="remove the duplicate from added_tokens (MLC's gen_config refuses it too)")
        seen.add(content)


def _load_tokenizer(source_dir: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(source_dir), use_fast=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable HF tokenizer"
        log.warning("cannot load the tokenizer in %s: %s", source_dir, exc)
        return None


def _eos_ids(generation: dict[str, Any] | None, config: dict[str, Any] | None) -> list[int]:
    for doc in (generation, config):
        value = (doc or {}).get("eos_token_id")
        if value is not None:
            return [int(v) for v in value] if isinstance(value, list) else [int(value)]
    return []


def choose_conv_template(source_dir: Path, *, conv_template: str | None = None, tokenizer: Any = None,
                         eos_token_ids: list[int] | None = None) -> Detection:
    """The Conversation for this model: `conv_template` if given, else detected from its chat template."""
    source_dir = Path(source_dir)
    if conv_template is not None:
        return Detection(conv=named_template(conv_template), method="override", named=conv_template)
    if eos_token_ids is None:
        eos_token_ids = _eos_ids(_read_json(source_dir / GENERATION_CONFIG_JSON),
                                 _read_json(source_dir / CONFIG_JSON))
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(source_dir)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        # No chat template to follow: a completion model. Plain text in, BOS first, stop at EOS
        # (the shape of MLC's "LM" template, with this model's ids).
        if tokenizer is not None:
            bos = tokenizer.bos_token_id
        else:
            bos = next((d.get("bos_token_id") for d in (_read_json(source_dir / GENERATION_CONFIG_JSON),
                                                         _read_json(source_dir / CONFIG_JSON))
                        if d and d.get("bos_token_id") is not None), None)
        log.warning("no chat template in %s: using a plain-text (LM) conversation template; "
                    "pass --conv-template NAME for a chat model", source_dir)
        conv = named_template("LM").replace(system_prefix_token_ids=[int(bos)] if isinstance(bos, int) else None,
                                            stop_token_ids=list(eos_token_ids))
        return Detection(conv=conv, method="no_tokenizer" if tokenizer is None else "no_chat_template", named="LM")
    try:
        return detect_conv_template(tokenizer_render(tokenizer), tokenizer_facts(tokenizer, eos_token_ids))
    except ConvTemplateError as exc:
        if exc.path is None:  # name the file the template comes from
            exc.path = str(_chat_template_file(source_dir))
        raise


def _chat_template_file(source_dir: Path) -> Path:
    jinja = source_dir / CHAT_TEMPLATE_JINJA
    return jinja if jinja.is_file() else source_dir / TOKENIZER_CONFIG_JSON


def build_chat_config(*, model_type: str, quantization: str, model_config: dict[str, Any], source_dir: Path,
                      conv_template: str | None = None) -> tuple[dict[str, Any], list[Path]]:
    """(mlc-chat-config dict in MLC's field order, tokenizer files to copy next to it).

    `model_config` is MLC's model_config for the architecture (dataclass fields, MLC's order).
    The returned files are those gen_config copies plus the fine-tune's chat_template.jinja
    (not listed in tokenizer_files, as MLC does not know it).
    """
    source_dir = Path(source_dir)
    generation = _read_json(source_dir / GENERATION_CONFIG_JSON)
    config = _read_json(source_dir / CONFIG_JSON)
    if "vocab_size" not in model_config:
        raise ChatConfigError("model_config has no vocab_size", path=source_dir / CONFIG_JSON)

    doc: dict[str, Any] = {
        "version": MLC_CHAT_CONFIG_VERSION,
        "model_type": model_type,
        "quantization": quantization,
        "model_config": dict(model_config),
        "vocab_size": model_config["vocab_size"],
        "context_window_size": model_config.get("context_window_size", -1),
        "sliding_window_size": model_config.get("sliding_window_size", -1),
        "prefill_chunk_size": model_config["prefill_chunk_size"],
        "attention_sink_size": model_config.get("attention_sink_size", -1),
        "tensor_parallel_shards": model_config.get("tensor_parallel_shards", 1),
        "pipeline_parallel_stages": model_config.get("pipeline_parallel_stages", 1),
        "active_vocab_size": model_config.get("active_vocab_size", model_config["vocab_size"]),
        "temperature": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "repetition_penalty": None,
        "top_p": None,
        "tokenizer_files": [],
        "tokenizer_info": {},
        "conv_template": None,
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
        "model_task": "chat",
        "embedding_metadata": None,
    }
    for source in (generation, config):  # gen_config: generation_config.json first, then config.json
        for key, value in (source or {}).items():
            if key in _FILLABLE and doc[key] is None:
                doc[key] = value

    files: list[Path] = []
    for name in MLC_TOKENIZER_FILES:
        if (source_dir / name).is_file():
            doc["tokenizer_files"].append(name)
            files.append(source_dir / name)
    tokenizer_json = source_dir / TOKENIZER_JSON
    tokenizer = _load_tokenizer(source_dir) if (tokenizer_json.is_file() or (source_dir / TOKENIZER_MODEL).is_file()) else None
    if (source_dir / TOKENIZER_MODEL).is_file() and not tokenizer_json.is_file() and tokenizer is not None:
        # gen_config converts sentencepiece to tokenizer.json with transformers; so do we.
        converted = Path(tempfile.mkdtemp(dir=_scratch_dir())) / TOKENIZER_JSON
        try:
            tokenizer.backend_tokenizer.save(str(converted))
            doc["tokenizer_files"].append(TOKENIZER_JSON)
            files.append(converted)
            tokenizer_json = converted
        except Exception as exc:  # noqa: BLE001 - MLC also only warns here
            log.warning("could not convert tokenizer.model to tokenizer.json: %s", exc)
    doc["tokenizer_info"] = detect_tokenizer_info(tokenizer_json)
    if tokenizer_json.is_file():
        _check_duplicated_added_tokens(tokenizer_json)
    if (source_dir / CHAT_TEMPLATE_FILE).is_file():
        files.append(source_dir / CHAT_TEMPLATE_FILE)

    for key, value in SYSTEM_DEFAULTS.items():
        if doc[key] is None:
            doc[key] = value
    if (source_dir / TOKENIZER_JSON).is_file() and tokenizer is not None:
        doc["active_vocab_size"] = len(tokenizer)

    eos_ids = _eos_ids(generation, config)
    detection = choose_conv_template(source_dir, conv_template=conv_template, tokenizer=tokenizer,
                                     eos_token_ids=eos_ids)
    doc["conv_template"] = detection.conv.to_json()
    return doc, files


def write_chat_config(out_dir: Path, doc: dict[str, Any]) -> None:
    """json.dump(indent=2), as gen_config writes mlc-chat-config.json (no trailing newline)."""
    write_json_atomic(Path(out_dir) / MLC_CHAT_CONFIG_JSON, doc, indent=2, trailing_newline=False, ensure_ascii=True)


def read_chat_config(artifact_dir: Path) -> dict[str, Any]:
    """An artifact's mlc-chat-config.json: a JSON object naming model_type and quantization."""
    path = Path(artifact_dir) / MLC_CHAT_CONFIG_JSON
    hint = "is this an MLC weight directory? re-create it with `personalize add`"
    doc = read_json_object(path, error=ChatConfigError, hint=hint)
    for key in ("model_type", "quantization"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ChatConfigError(f"{MLC_CHAT_CONFIG_JSON} has no {key}", path=path, hint=hint)
    conv = doc.get("conv_template")
    if conv is not None and not isinstance(conv, dict):
        raise ChatConfigError(f"{MLC_CHAT_CONFIG_JSON}: conv_template is not a conversation object", path=path,
                              hint=hint)
    return doc
