"""Check an artifact directory: every file against personalize.json, the tensor cache against its shards.

Returns problems instead of raising, so a caller can list all of them; each names the file at fault.
Every file is read once (sha256 and, for shards, md5 in the same pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conversation import Conversation
from .errors import ArtifactError
from .files import file_digests, read_json_object
from .format import (
    LINEAGE_JSON,
    MLC_CHAT_CONFIG_JSON,
    NDARRAY_CACHE_JSON,
    SHARD_FORMAT,
    TENSOR_CACHE_B16_JSON,
    TENSOR_CACHE_JSON,
)
from .lineage import artifact_files
from .tensor_cache import b16_document, stored_nbytes

REQUIRED_CHAT_KEYS = ("model_type", "quantization", "vocab_size", "context_window_size", "prefill_chunk_size",
                      "tokenizer_files", "conv_template")
_RECORD_KEYS = ("name", "shape", "dtype", "format", "nbytes", "byteOffset")
_SHARD_KEYS = ("dataPath", "format", "nbytes", "records")


@dataclass(frozen=True)
class Problem:
    path: str  # the file at fault, relative to the artifact (or the directory itself)
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _Digests:
    """sha256 + md5 per file, computed once on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, tuple[str, str]] = {}

    def get(self, rel: str) -> tuple[str, str]:
        if rel not in self._cache:
            self._cache[rel] = file_digests(self.root / rel, "sha256", "md5")
        return self._cache[rel]


def verify_artifact(artifact_dir: Path, *, require_lineage: bool = True) -> list[Problem]:
    """All problems found in `artifact_dir`; an empty list means it is intact."""
    root = Path(artifact_dir)
    if not root.is_dir():
        return [Problem(str(root), "artifact directory does not exist")]
    digests = _Digests(root)
    problems: list[Problem] = []
    lineage_problems, recorded = _check_lineage(root, digests, require_lineage)
    problems += lineage_problems
    problems += _check_tensor_cache(root, digests, recorded)
    problems += _check_chat_config(root)
    return problems


def _load_json(root: Path, rel: str, problems: list[Problem]) -> dict[str, Any] | None:
    """The JSON object in `rel`, or None with the reason appended to `problems`."""
    try:
        doc = read_json_object(root / rel, missing_ok=True)
    except ArtifactError as exc:
        problems.append(Problem(rel, exc.message.removeprefix(f"{rel} ")))
        return None
    if doc is None:
        problems.append(Problem(rel, "missing"))
    return doc


def _check_lineage(root: Path, digests: _Digests, required: bool) -> tuple[list[Problem], dict[str, Any]]:
    """Problems, and the files map of personalize.json ({} when unusable)."""
    problems: list[Problem] = []
    if not (root / LINEAGE_JSON).is_file():
        return ([Problem(LINEAGE_JSON, "missing: cannot check file hashes")] if required else []), {}
    lineage = _load_json(root, LINEAGE_JSON, problems)
    if lineage is None:
        return problems, {}
    files = lineage.get("files")
    if not isinstance(files, dict):
        return [Problem(LINEAGE_JSON, "has no files map")], {}
    present = set(artifact_files(root))
    for rel in sorted(set(files) - present):
        problems.append(Problem(rel, f"listed in {LINEAGE_JSON} but missing"))
    for rel in sorted(present - set(files)):
        problems.append(Problem(rel, f"not listed in {LINEAGE_JSON} (unexpected file)"))
    for rel in sorted(set(files) & present):
        want = files[rel] if isinstance(files[rel], dict) else {}
        size = (root / rel).stat().st_size
        if want.get("size") != size:
            problems.append(Problem(rel, f"size {size} differs from {want.get('size')} in {LINEAGE_JSON}"))
            continue
        if digests.get(rel)[0] != want.get("sha256"):
            problems.append(Problem(rel, f"sha256 differs from {LINEAGE_JSON} (file changed or corrupted)"))
    return problems, files


def _check_tensor_cache(root: Path, digests: _Digests, recorded: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    doc = _load_json(root, TENSOR_CACHE_JSON, problems)
    if doc is None:
        return problems
    if not isinstance(doc.get("records"), list):
        return [Problem(TENSOR_CACHE_JSON, "has no records list")]
    names: set[str] = set()
    count = 0
    for i, shard in enumerate(doc["records"]):
        if not isinstance(shard, dict) or any(k not in shard for k in _SHARD_KEYS):
            problems.append(Problem(TENSOR_CACHE_JSON, f"shard entry {i} lacks one of {_SHARD_KEYS}"))
            continue
        rel = shard["dataPath"]
        if shard["format"] != SHARD_FORMAT:
            problems.append(Problem(TENSOR_CACHE_JSON, f"{rel}: format {shard['format']!r}, expected {SHARD_FORMAT!r}"))
        if not (root / rel).is_file():
            problems.append(Problem(rel, f"missing (named in {TENSOR_CACHE_JSON})"))
            continue
        size = (root / rel).stat().st_size
        if size != shard["nbytes"]:
            problems.append(Problem(rel, f"size {size} differs from nbytes {shard['nbytes']} in {TENSOR_CACHE_JSON}"))
        elif "md5sum" in shard and digests.get(rel)[1] != shard["md5sum"]:
            # Blame the side that changed: a shard still matching personalize.json means the JSON did.
            shard_intact = (recorded.get(rel) or {}).get("sha256") == digests.get(rel)[0]
            if shard_intact:
                problems.append(Problem(TENSOR_CACHE_JSON, f"md5sum of {rel} does not match the (intact) shard"))
            else:
                problems.append(Problem(rel, f"md5 differs from md5sum in {TENSOR_CACHE_JSON}"))
        end = 0
        for rec in shard["records"]:
            count += 1
            if not isinstance(rec, dict) or any(k not in rec for k in _RECORD_KEYS):
                problems.append(Problem(TENSOR_CACHE_JSON, f"a record in {rel} lacks one of {_RECORD_KEYS}"))
                continue
            name = rec["name"]
            if name in names:
                problems.append(Problem(TENSOR_CACHE_JSON, f"parameter {name!r} appears twice"))
            names.add(name)
            try:
                want = stored_nbytes(rec["shape"], rec["dtype"], rec["format"])
            except ArtifactError as exc:
                problems.append(Problem(TENSOR_CACHE_JSON, f"{name}: {exc}"))
                continue
            if rec["nbytes"] != want:
                problems.append(Problem(TENSOR_CACHE_JSON, f"{name}: nbytes {rec['nbytes']} but shape "
                                        f"{rec['shape']} of {rec['dtype']} ({rec['format']}) needs {want}"))
            if rec["byteOffset"] < end:
                problems.append(Problem(TENSOR_CACHE_JSON, f"{name}: overlaps the previous record in {rel}"))
            end = rec["byteOffset"] + rec["nbytes"]
            if end > shard["nbytes"]:
                problems.append(Problem(TENSOR_CACHE_JSON, f"{name}: bytes [{rec['byteOffset']}, {end}) "
                                        f"outside {rel} ({shard['nbytes']} bytes)"))
    meta = doc.get("metadata")
    if isinstance(meta, dict) and "ParamSize" in meta and meta["ParamSize"] != count:
        problems.append(Problem(TENSOR_CACHE_JSON, f"metadata ParamSize {meta['ParamSize']} but {count} records"))

    text = (root / TENSOR_CACHE_JSON).read_bytes()
    legacy = root / NDARRAY_CACHE_JSON
    if legacy.is_file() and legacy.read_bytes() != text:
        problems.append(Problem(NDARRAY_CACHE_JSON, f"differs from {TENSOR_CACHE_JSON} (must be identical)"))
    b16_path = root / TENSOR_CACHE_B16_JSON
    if b16_path.is_file():
        b16 = _load_json(root, TENSOR_CACHE_B16_JSON, problems)
        if b16 is not None and b16 != b16_document(doc):
            problems.append(Problem(TENSOR_CACHE_B16_JSON, f"does not match {TENSOR_CACHE_JSON}"))
    return problems


def _check_chat_config(root: Path) -> list[Problem]:
    problems: list[Problem] = []
    doc = _load_json(root, MLC_CHAT_CONFIG_JSON, problems)
    if doc is None:
        return problems
    for key in REQUIRED_CHAT_KEYS:
        if key not in doc:
            problems.append(Problem(MLC_CHAT_CONFIG_JSON, f"lacks {key!r}"))
    conv = doc.get("conv_template")
    if conv is not None:
        try:
            Conversation.from_json(conv)
        except ArtifactError as exc:
            problems.append(Problem(MLC_CHAT_CONFIG_JSON, f"conv_template: {exc.message}"))
    for name in doc.get("tokenizer_files", []) or []:
        if not (root / name).is_file():
            problems.append(Problem(name, f"listed in {MLC_CHAT_CONFIG_JSON} tokenizer_files but missing"))
    return problems
