"""Write and read MLC tensor caches (tensor-cache.json + params_shard_*.bin).

The writer reproduces `tvm.contrib.tvmjs.dump_tensor_cache` byte for byte (JSON and every shard):
same packing rule, record fields and key order, f32-to-bf16 encoding and md5 per shard. It
differs only in how it gets there: the pending shard is streamed to a temporary file while its
md5/sha256 are updated, so memory holds the current tensor only, and no file is read back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .errors import TensorCacheError
from .files import read_json_object
from .format import (
    DEFAULT_SHARD_CAP_BYTES,
    ENCODE_FORMATS,
    NDARRAY_CACHE_JSON,
    SHARD_FORMAT,
    SHARD_PREFIX,
    TENSOR_CACHE_B16_JSON,
    TENSOR_CACHE_JSON,
)

# bf16 encoding rounds to nearest even inside (-limit, limit) and truncates outside, so large
# values (attention masks, inf, NaN) clip to the limit instead of overflowing (tvmjs rule).
_BF16_LIMIT = np.array([(0x7F7FFFFF >> 16) << 16], dtype=np.uint32).view(np.float32)[0]


def encode_f32_to_bf16(value: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bits, MLC's rule (RNE in range, truncation out of range)."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    bits = value.view(np.uint32)
    in_range = np.logical_and(value < _BF16_LIMIT, value > -_BF16_LIMIT)
    bias = np.where(in_range, ((bits >> 16) & 1) + 0x7FFF, 0).astype(np.uint32)
    return ((bits + bias) >> 16).astype(np.uint16)


def decode_bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits -> float32 (exact)."""
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dtype_name(dtype: np.dtype) -> str:
    """TVM's dtype string for a numpy / ml_dtypes dtype (float16, bfloat16, uint32, float8_e4m3fn...)."""
    return np.dtype(dtype).name


def numpy_dtype(name: str) -> np.dtype:
    """Inverse of `dtype_name`."""
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    try:
        return np.dtype(name)
    except TypeError as exc:
        raise TensorCacheError(f"unknown dtype {name!r} in tensor cache") from exc


def stored_nbytes(shape: list[int] | tuple[int, ...], dtype: str, fmt: str) -> int:
    """Bytes a record occupies in its shard (f32-to-bf16 halves float32)."""
    itemsize = numpy_dtype(dtype).itemsize
    if fmt == "f32-to-bf16" and dtype == "float32":
        itemsize = 2
    return math.prod(shape) * itemsize


def parameter_bytes(tensor_cache: dict[str, Any]) -> int:
    """Bytes of every record on the device: numel * itemsize (f32-to-bf16 float32 decodes to 4 bytes)."""
    total = 0
    for shard in tensor_cache.get("records", []):
        for rec in shard.get("records", []):
            try:
                itemsize = numpy_dtype(rec["dtype"]).itemsize
            except TensorCacheError:
                raise TensorCacheError(f"unknown dtype {rec['dtype']!r} for {rec['name']} in {TENSOR_CACHE_JSON}",
                                       hint="re-create the artifact with `personalize add`") from None
            total += math.prod(int(d) for d in rec["shape"]) * itemsize
    return total


def param_stats(param_count: int, param_bytes: float, total_source_params: int) -> dict[str, Any]:
    """MLC's tensor-cache metadata: ParamSize, ParamBytes (a float), BitsPerParam.

    `param_bytes` counts in-memory itemsize (float32 as 4 bytes even though stored as bf16);
    `total_source_params` is the element count of the HF tensors the converter loaded.
    """
    param_bytes = float(param_bytes)
    return {
        "ParamSize": int(param_count),
        "ParamBytes": param_bytes,
        "BitsPerParam": param_bytes * 8.0 / total_source_params,
    }


def _as_bytes(array: np.ndarray) -> memoryview:
    """Raw little-endian bytes without a copy when contiguous (ml_dtypes lack the buffer protocol)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


class _HashingFile:
    """A file being written whose md5 (for MLC) and sha256 (for lineage) grow with it."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | memoryview) -> None:
        self.handle.write(data)
        self.md5.update(data)
        self.sha256.update(data)
        self.nbytes += len(data)

    def close(self) -> None:
        self.handle.close()


class TensorCacheWriter:
    """Streaming writer of an MLC tensor cache, byte-identical to tvmjs.dump_tensor_cache.

    `add` tensors in stream order, then `finish(metadata)`. A tensor that would push the
    pending shard to the cap closes it (the `>=` test), unless the tensor is at least half the
    cap: such a tensor gets its own shard at once ("out of band") and the pending shard keeps
    filling, so shard numbers are not in tensor order - exactly as MLC does.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        shard_cap_bytes: int = DEFAULT_SHARD_CAP_BYTES,
        encode_format: str = "f32-to-bf16",
        write_b16_json: bool = True,
    ):
        if encode_format not in ENCODE_FORMATS:
            raise TensorCacheError(f"invalid encode_format {encode_format!r}", hint=f"use one of {ENCODE_FORMATS}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_cap_bytes = int(shard_cap_bytes)
        self.encode_format = encode_format
        self.write_b16_json = write_b16_json
        self.bytes_written = 0  # bytes of all shard files
        self.file_hashes: dict[str, str] = {}  # shard file name -> sha256
        self.param_count = 0
        self.param_bytes = 0.0  # in-memory bytes, as MLC's ParamBytes counts them
        self._shards: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._counter = 0
        self._pending: _HashingFile | None = None
        self._pending_records: list[dict[str, Any]] = []
        self._finished = False
        self._temp_serial = 0

    # -- public ---------------------------------------------------------------------------
    def add(self, name: str, array: np.ndarray) -> None:
        if self._finished:
            raise TensorCacheError("tensor cache already finished", path=self.out_dir)
        if name in self._names:
            raise TensorCacheError(f"duplicate parameter {name!r} in tensor cache", path=self.out_dir)
        self._names.add(name)
        array = np.asarray(array)
        dtype = dtype_name(array.dtype)
        if self.encode_format == "f32-to-bf16" and dtype == "float32":
            data = _as_bytes(encode_f32_to_bf16(array))
        else:
            data = _as_bytes(array)
        self.param_count += 1
        self.param_bytes += math.prod(array.shape) * array.dtype.itemsize
        rec: dict[str, Any] = {
            "name": name,
            "shape": [int(d) for d in array.shape],
            "dtype": dtype,
            "format": self.encode_format,
            "nbytes": len(data),
        }
        pending = self._pending.nbytes if self._pending else 0
        if pending + len(data) >= self.shard_cap_bytes:
            if 2 * len(data) >= self.shard_cap_bytes:
                rec["byteOffset"] = 0
                shard = self._open_shard_file()
                shard.write(data)
                self._commit(shard, [rec])
                return
            self._commit_pending()
        if self._pending is None:
            self._pending = self._open_shard_file()
        rec["byteOffset"] = self._pending.nbytes
        self._pending.write(data)
        self._pending_records.append(rec)

    def finish(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Flush the last shard; write tensor-cache.json and the identical ndarray-cache.json."""
        if self._finished:
            raise TensorCacheError("tensor cache already finished", path=self.out_dir)
        self._commit_pending()
        self.abort()  # drop a pending file that only ever held zero-byte tensors
        self._finished = True
        doc = {"metadata": metadata, "records": self._shards}
        text = json.dumps(doc, indent=4)  # tvmjs: json.dump(indent=4), no trailing newline
        for fname in (TENSOR_CACHE_JSON, NDARRAY_CACHE_JSON):
            (self.out_dir / fname).write_text(text, encoding="utf-8")
        b16 = b16_document(doc)
        b16_path = self.out_dir / TENSOR_CACHE_B16_JSON
        if self.write_b16_json and b16 is not None:
            b16_path.write_text(json.dumps(b16, indent=4), encoding="utf-8")
        elif b16_path.exists():
            b16_path.unlink()
        return doc

    def abort(self) -> None:
        """Close and remove the pending temporary file (shards already written stay)."""
        if self._pending is not None:
            self._pending.close()
            self._pending.path.unlink(missing_ok=True)
            self._pending = None

    def __enter__(self) -> TensorCacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    # -- internals ------------------------------------------------------------------------
    def _open_shard_file(self) -> _HashingFile:
        # The shard's number is only known when it is committed, so write under a temp name.
        self._temp_serial += 1
        return _HashingFile(self.out_dir / f".{SHARD_PREFIX}_pending_{self._temp_serial}.tmp")

    def _commit_pending(self) -> None:
        # Like tvmjs, an empty pending shard is not committed (its zero-byte records wait).
        if self._pending is not None and self._pending.nbytes > 0:
            self._commit(self._pending, self._pending_records)
            self._pending = None
            self._pending_records = []

    def _commit(self, shard: _HashingFile, records: list[dict[str, Any]]) -> None:
        shard.close()
        data_path = f"{SHARD_PREFIX}_{self._counter}.bin"
        self._counter += 1
        os.replace(shard.path, self.out_dir / data_path)
        self._shards.append(
            {
                "dataPath": data_path,
                "format": SHARD_FORMAT,
                "nbytes": shard.nbytes,
                "records": records,
                "md5sum": shard.md5.hexdigest(),
            }
        )
        self.bytes_written += shard.nbytes
        self.file_hashes[data_path] = shard.sha256.hexdigest()


def b16_document(doc: dict[str, Any]) -> dict[str, Any] | None:
    """tvmjs's tensor-cache-b16.json: f32-to-bf16 float32 records relabelled raw bfloat16; None if none."""
    if not any(
        r["format"] == "f32-to-bf16" and r["dtype"] == "float32" for s in doc["records"] for r in s["records"]
    ):
        return None
    b16 = copy.deepcopy(doc)
    for shard in b16["records"]:
        for rec in shard["records"]:
            if rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32":
                rec["format"] = "raw"
                rec["dtype"] = "bfloat16"
    return b16


# -- reading ---------------------------------------------------------------------------------
class TensorCache:
    """An artifact's tensor cache, read once: records by name, shards, byte counts, decoded tensors.

    In the spirit of gguf-py's GGUFReader: the JSON is parsed on construction (tensor-cache.json,
    else the legacy ndarray-cache.json), tensors are read on demand and decoded exactly as MLC
    stores them ("raw", or "f32-to-bf16" float32 -> float32).
    """

    def __init__(self, artifact_dir: Path):
        self.artifact_dir = Path(artifact_dir)
        self.path, self.doc = _read_document(self.artifact_dir)
        self.metadata: dict[str, Any] = self.doc.get("metadata") or {}
        self.shards: list[dict[str, Any]] = self.doc["records"]
        self.records: dict[str, dict[str, Any]] = {}
        self._shard_of: dict[str, dict[str, Any]] = {}
        for shard in self.shards:
            if not isinstance(shard, dict) or not isinstance(shard.get("records"), list):
                raise TensorCacheError(f"{self.path.name} has a malformed shard entry", path=self.path,
                                       hint="re-create the artifact with `personalize add`")
            for rec in shard["records"]:
                if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
                    raise TensorCacheError(f"{self.path.name} has a record without a name",
                                           path=self.path, hint="re-create the artifact with `personalize add`")
                self.records[rec["name"]] = rec
                self._shard_of[rec["name"]] = shard

    # -- what is in it --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Parameter names in record order."""
        return list(self.records)

    @property
    def shard_files(self) -> list[str]:
        """Shard file names (dataPath), in the order tensor-cache.json lists them."""
        return [shard["dataPath"] for shard in self.shards if "dataPath" in shard]

    @property
    def param_bytes(self) -> int:
        """Bytes of every parameter on the device: numel * itemsize (f32-to-bf16 decodes to 4 bytes)."""
        return parameter_bytes(self.doc)

    @property
    def stored_bytes(self) -> int:
        """Bytes of all shard files as tensor-cache.json records them."""
        return sum(int(shard.get("nbytes", 0)) for shard in self.shards)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, name: object) -> bool:
        return name in self.records

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return self.items()

    # -- tensors ----------------------------------------------------------------------------
    def load(self, name: str) -> np.ndarray:
        """One tensor, decoded."""
        if name not in self.records:
            raise TensorCacheError(f"no tensor named {name!r} in the tensor cache", path=self.path,
                                   hint="is this the artifact you meant?")
        shard = self._shard_of[name]
        with self._open(shard) as handle:
            return self._read(shard, self.records[name], handle)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every (name, tensor) in record order, one open file per shard."""
        for shard in self.shards:
            with self._open(shard) as handle:
                for rec in shard["records"]:
                    yield rec["name"], self._read(shard, rec, handle)

    def _open(self, shard: dict[str, Any]):
        path = self.artifact_dir / shard["dataPath"]
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError as exc:
            raise TensorCacheError(f"missing shard {shard['dataPath']}", path=path,
                                   hint="download or re-create the artifact") from exc

    def _read(self, shard: dict[str, Any], rec: dict[str, Any], handle) -> np.ndarray:
        handle.seek(rec["byteOffset"])
        raw = handle.read(rec["nbytes"])
        if len(raw) != rec["nbytes"]:
            raise TensorCacheError(f"{shard['dataPath']} is shorter than the record {rec['name']!r} needs",
                                   path=self.artifact_dir / shard["dataPath"],
                                   hint="the shard is truncated; re-create it")
        return decode_record(raw, rec)


def _read_document(artifact_dir: Path) -> tuple[Path, dict[str, Any]]:
    for fname in (TENSOR_CACHE_JSON, NDARRAY_CACHE_JSON):
        path = artifact_dir / fname
        doc = read_json_object(path, error=TensorCacheError, missing_ok=True)
        if doc is not None:
            if not isinstance(doc.get("records"), list):
                raise TensorCacheError(f"{fname} has no records list", path=path,
                                       hint="re-create the artifact with `personalize add`")
            return path, doc
    raise TensorCacheError(f"no {TENSOR_CACHE_JSON} in {artifact_dir}", path=artifact_dir / TENSOR_CACHE_JSON,
                           hint="is this an MLC weight directory?")


def decode_record(raw: bytes, rec: dict[str, Any]) -> np.ndarray:
    """A record's bytes as MLC decodes them: f32-to-bf16 float32 comes back as float32."""
    dtype = rec["dtype"]
    shape = tuple(rec["shape"])
    if rec["format"] == "f32-to-bf16" and dtype == "float32":
        return decode_bf16_to_f32(np.frombuffer(raw, dtype=np.uint16)).reshape(shape)
    return np.frombuffer(raw, dtype=numpy_dtype(dtype)).reshape(shape).copy()


# Short forms over the one reader, for callers that need a single answer.
def read_tensor_cache(artifact_dir: Path) -> dict[str, Any]:
    """Parsed tensor-cache.json (falls back to ndarray-cache.json for older artifacts)."""
    return TensorCache(artifact_dir).doc


def iter_tensors(artifact_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor in record order, decoded."""
    return TensorCache(artifact_dir).items()


def load_tensor(artifact_dir: Path, name: str) -> np.ndarray:
    """One tensor by name, decoded."""
    return TensorCache(artifact_dir).load(name)
