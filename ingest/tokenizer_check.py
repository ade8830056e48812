"""Refuse corrupt tokenizer files when the source is opened, not after conversion.

A broken tokenizer_config.json used to be skipped quietly downstream (a generic chat template, the
corrupt file copied into the artifact, `verify` ok): an artifact that is worse than its source
and says nothing. Each file is checked with what will read it: tokenizer.json with the
`tokenizers` library (what transformers' fast tokenizers and MLC's runtime load), the JSON side
files as JSON objects, the text files as UTF-8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import IngestError

# Tokenizer side files that are JSON objects (transformers reads each with json.load into a dict).
JSON_OBJECT_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                     "generation_config.json", "chat_template.json")
TEXT_FILES = ("merges.txt", "chat_template.jinja")
HINT = "restore the file from the model you trained (or delete it if the model does not need it)"


def check_tokenizer_files(model_dir: Path) -> None:
    """Every tokenizer file present in `model_dir` is readable as what it claims to be."""
    model_dir = Path(model_dir)
    for name in JSON_OBJECT_FILES:
        path = model_dir / name
        if path.is_file():
            _check_object_fields(name, read_json_object(path), path)
    for name in TEXT_FILES:
        path = model_dir / name
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise IngestError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path,
                                  hint=HINT) from exc
            if name == "chat_template.jinja":
                check_chat_template(text, name, path)
    path = model_dir / "tokenizer.json"
    if path.is_file():
        check_tokenizer_json(path)
    path = model_dir / "tokenizer.model"
    if path.is_file() and path.stat().st_size == 0:
        raise IngestError("tokenizer.model is empty", path=path, hint=HINT)


def read_json_object(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IngestError(f"{path.name} is not valid JSON ({_first_line(exc)})", path=path, hint=HINT) from exc
    if not isinstance(doc, dict):
        raise IngestError(f"{path.name} is not a JSON object", path=path, hint=HINT)
    return doc


def check_tokenizer_json(path: Path) -> None:
    """tokenizer.json must load in the `tokenizers` library, as every runtime will load it (its parser
    also reports invalid JSON, so the file is parsed once)."""
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise IngestError(f"tokenizer.json cannot be loaded by the tokenizers library ({_first_line(exc)})",
                          path=path, hint=HINT) from exc


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
BOOL_KEYS = ("clean_up_tokenization_spaces", "add_bos_token", "add_eos_token", "legacy", "add_prefix_space",
             "do_lower_case", "split_special_tokens", "use_default_system_prompt", "do_sample")
# Generation defaults copied into mlc-chat-config.json, where the runtimes parse them as numbers.
NUMBER_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty", "frequency_penalty",
               "model_max_length")
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _check_object_fields(name: str, doc: dict, path: Path) -> None:
    """The fields transformers and the artifact read: a wrong type is refused here, where the message
    can name the file, instead of making the tokenizer fail to load later (a quiet fallback)."""
    def bad(what: str) -> IngestError:
        return IngestError(f"{name}: {what}", path=path, hint=HINT)

    if name in ("tokenizer_config.json", "special_tokens_map.json"):
        for key in SPECIAL_TOKEN_KEYS:
            if key in doc and doc[key] is not None and not _is_token(doc[key]):
                raise bad(f"{key} must be a token string, got {doc[key]!r}")
        for key in ("additional_special_tokens", "extra_special_tokens"):
            value = doc.get(key)
            tokens = value.values() if isinstance(value, dict) else value
            if value is not None and not (isinstance(value, (list, dict)) and all(_is_token(t) for t in tokens)):
                raise bad(f"{key} must be a list of token strings, got {value!r}")
    if name == "tokenizer_config.json":
        template = doc.get("chat_template")
        if template is not None and not isinstance(template, str) and not (
                isinstance(template, list)
                and all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
                        for t in template)):
            raise bad("chat_template must be a string or a list of {name, template} objects")
        for text in [template] if isinstance(template, str) else [t["template"] for t in template or []]:
            check_chat_template(text, name, path)
        if "tokenizer_class" in doc and not isinstance(doc["tokenizer_class"], (str, type(None))):
            raise bad(f"tokenizer_class must be a string, got {doc['tokenizer_class']!r}")
        for key in ("padding_side", "truncation_side"):
            if key in doc and doc[key] not in ("left", "right"):
                raise bad(f"{key} must be 'left' or 'right', got {doc[key]!r}")
        decoder = doc.get("added_tokens_decoder")
        if decoder is not None and not (isinstance(decoder, dict) and all(
                k.isdigit() and isinstance(v, dict) and isinstance(v.get("content"), str) for k, v in decoder.items())):
            raise bad("added_tokens_decoder must map token ids to {content, ...} objects")
    if name == "added_tokens.json" and not all(_is_id(v) and v >= 0 for v in doc.values()):
        raise bad("every added token must map to a token id")
    if name == "vocab.json" and not all(_is_id(v) and v >= 0 for v in doc.values()):
        raise bad("every vocabulary entry must map to a token id")
    if name in ("tokenizer_config.json", "generation_config.json", "config.json"):
        for key in BOOL_KEYS:
            if key in doc and doc[key] is not None and not isinstance(doc[key], bool):
                raise bad(f"{key} must be true or false, got {doc[key]!r}")
        for key in NUMBER_KEYS:
            if key in doc and doc[key] is not None and not _is_number(doc[key]):
                raise bad(f"{key} must be a number, got {doc[key]!r}")
    if name in ("generation_config.json", "config.json"):
        check_token_ids(doc, name, path)
    if name == "chat_template.json":
        if not isinstance(doc.get("chat_template"), str):
            raise bad("chat_template.json must hold a chat_template string")
        check_chat_template(doc["chat_template"], name, path)


def check_chat_template(template: str, name: str, path: Path) -> None:
    """The chat template compiles as transformers compiles it (a broken one would otherwise fall back
    to a generic conversation template without a word)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
    except ImportError:  # an older or newer transformers: jinja2's sandbox, as transformers uses it
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def compile_template(text: str):
            return ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).from_string(text)
    try:
        compile_template(template)
    except Exception as exc:  # noqa: BLE001 - jinja2's TemplateError, or RecursionError on deep nesting
        raise IngestError(f"{name}: the chat template does not compile ({_first_line(exc)})", path=path,
                          hint=HINT) from exc


def check_generation_fields(config: dict, path: Path) -> None:
    """config.json's generation defaults and token ids (they fill the artifact's chat config too)."""
    _check_object_fields("config.json", config, path)


def check_token_ids(doc: dict, name: str, path: Path) -> None:
    """bos/eos/pad ids: a token id (eos: or a list of them), as the artifact's chat config records them."""
    for key in TOKEN_ID_KEYS:
        value = doc.get(key)
        ok = value is None or _is_id(value) or (key == "eos_token_id" and isinstance(value, list)
                                                and all(_is_id(v) for v in value))
        if not ok:
            raise IngestError(f"{name}: {key} must be a token id, got {value!r}", path=path, hint=HINT)


def _is_token(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str))


def _is_id(value: object) -> bool:
    # int32, as the runtimes store ids; old llama configs use pad_token_id -1
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))  # ints of any size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
