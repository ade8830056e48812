"""The three file primitives every reader and writer of artifacts shares.

- `read_json_object`: a JSON object or one typed error naming the file (never a bare ValueError);
- `write_json_atomic`: write to a temp file next to the target, then rename (readers never see half);
- `sha256_file` / `file_digests`: hex digests of a file, streamed in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArtifactError

_CHUNK = 1 << 20
_RECREATE = "re-create the artifact with `personalize add`"


def read_json_object(path: Path, *, error: type[ArtifactError] = ArtifactError, missing_ok: bool = False,
                     hint: str = _RECREATE) -> dict[str, Any] | None:
    """The parsed JSON object at `path`; None if missing and `missing_ok`; else `error` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"{path.name} is missing", path=path, hint=hint) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {path.name}: {exc}", path=path, hint=hint) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path.name} is not valid JSON: {exc}", path=path, hint=hint) from None
    if not isinstance(doc, dict):
        raise error(f"{path.name} is not a JSON object", path=path, hint=hint)
    return doc


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (utf-8) via a temp file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, doc: Any, *, indent: int = 2, trailing_newline: bool = True,
                      ensure_ascii: bool = False) -> None:
    """`json.dumps(doc, indent=indent)` written atomically (non-ASCII kept unless `ensure_ascii`)."""
    text = json.dumps(doc, indent=indent, ensure_ascii=ensure_ascii) + ("\n" if trailing_newline else "")
    write_text_atomic(path, text)


def file_digests(path: Path, *algorithms: str) -> tuple[str, ...]:
    """Hex digests of one file for each hashlib algorithm, in one pass of 1 MiB chunks."""
    digests = [hashlib.new(name) for name in algorithms]
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            for digest in digests:
                digest.update(chunk)
    return tuple(d.hexdigest() for d in digests)


def sha256_file(path: Path) -> str:
    """sha256 hex of a file."""
    return file_digests(path, "sha256")[0]
