"""Refuse corrupt tokenizer files when the source is opened, not after conversion.

A broken tokenizer_config.json used to be skipped quietly downstream (a generic chat template, the
corrupt file copied into the artifact, `verify` ok): an artifact that is worse than its source
and says nothing. Each file is checked with what will read it: tokenizer.json with the
`tokenizers` library (what transformers' fast tokenizers and MLC's runtime load), the JSON side
files as JSON objects, the text files as UTF-8.
"""

from __future__ import annotations

import json
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
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise IngestError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path,
                                  hint=HINT) from exc
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
    """tokenizer.json must load in the `tokenizers` library, as every runtime will load it."""
    read_json_object(path)
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception for a bad file
        raise IngestError(f"tokenizer.json cannot be loaded by the tokenizers library ({_first_line(exc)})",
                          path=path, hint=HINT) from exc


def _check_object_fields(name: str, doc: dict, path: Path) -> None:
    """The few fields downstream code reads without a fallback: a wrong type is refused, not ignored."""
    if name == "tokenizer_config.json":
        template = doc.get("chat_template")
        if template is not None and not isinstance(template, str) and not (
                isinstance(template, list)
                and all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template)):
            raise IngestError("tokenizer_config.json: chat_template must be a string or a list of "
                              "{name, template} objects", path=path, hint=HINT)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = doc.get(key)
            if value is not None and not isinstance(value, (str, dict)):
                raise IngestError(f"tokenizer_config.json: {key} must be a string, got {value!r}", path=path,
                                  hint=HINT)
    if name == "chat_template.json" and not isinstance(doc.get("chat_template"), str):
        raise IngestError("chat_template.json must hold a chat_template string", path=path, hint=HINT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
