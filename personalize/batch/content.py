"""Content hashes that key the delivered log: a source directory's files, streamed."""

from __future__ import annotations

import hashlib
from pathlib import Path

# What does not change the artifact: docs, git metadata, caches written by tools next to the files.
IGNORED_NAMES = {"README.md", ".gitattributes", ".gitignore"}
IGNORED_DIRS = {".git", ".cache", ".huggingface", "__pycache__"}
CHUNK = 8 << 20


def source_content_sha256(directory: Path | str) -> str:
    """sha256 over (relative path, size, bytes) of every file of a model or adapter directory (config,
    weights, tokenizer), in sorted order, read in 8 MiB chunks: a different byte anywhere is a different
    source, a copy of the same files in another place is the same one."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(_files(root)):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in IGNORED_DIRS for part in rel.parts[:-1]) or path.name in IGNORED_NAMES:
            continue
        if path.is_file():  # follows symlinks (the Hub cache links snapshot files to blobs)
            out.append(path)
    return out
