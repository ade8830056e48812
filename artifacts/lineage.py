"""personalize.json: where an artifact came from, and the sha256 + size of every other file in it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import LineageError
from .files import read_json_object, sha256_file, write_json_atomic
from .format import LINEAGE_JSON

hash_file = sha256_file  # the name lineage callers know


HUB_BOOKKEEPING = {".gitattributes", ".cache"}


def artifact_files(artifact_dir: Path) -> list[str]:
    """Relative paths (with '/') of every file in the artifact except personalize.json, sorted.

    A copy downloaded from the Hub also holds the repo's `.gitattributes` and huggingface_hub's
    `.cache/` bookkeeping; neither is part of the artifact.
    """
    artifact_dir = Path(artifact_dir)
    out = []
    for root, dirs, names in os.walk(artifact_dir):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == artifact_dir and d in HUB_BOOKKEEPING))
        for name in names:
            rel = (Path(root) / name).relative_to(artifact_dir).as_posix()
            if rel != LINEAGE_JSON and rel not in HUB_BOOKKEEPING:
                out.append(rel)
    return sorted(out)


def file_map(artifact_dir: Path, known_sha256: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "size"}} for every other file; `known_sha256` saves re-reading shards."""
    artifact_dir = Path(artifact_dir)
    known = known_sha256 or {}
    out = {}
    for rel in artifact_files(artifact_dir):
        path = artifact_dir / rel
        out[rel] = {"sha256": known.get(rel) or hash_file(path), "size": path.stat().st_size}
    return out


def write_lineage(artifact_dir: Path, doc: dict[str, Any], *, known_sha256: dict[str, str] | None = None) -> None:
    """Write personalize.json (indent=2, trailing newline), atomically.

    If `doc` has no "files" map yet, it is computed from the directory (and stored in `doc`).
    """
    artifact_dir = Path(artifact_dir)
    if "files" not in doc:
        doc["files"] = file_map(artifact_dir, known_sha256)
    write_json_atomic(artifact_dir / LINEAGE_JSON, doc)


def read_lineage(artifact_dir: Path) -> dict[str, Any]:
    """personalize.json as a dict; LineageError if it is missing or not a JSON object."""
    path = Path(artifact_dir) / LINEAGE_JSON
    if not path.is_file():
        raise LineageError(f"no {LINEAGE_JSON} in {artifact_dir}", path=path,
                           hint="not written by personalize; re-create it with `personalize add`")
    return read_json_object(path, error=LineageError)
