"""Lazy access to HF weight files: safetensors (single or sharded) and torch .bin (weights_only).

Nothing is read until a tensor is asked for; shapes and dtypes come from the file headers, so a
whole model can be validated before a single weight byte is touched. safetensors tensors are read
with plain positioned reads into fresh arrays (the header gives each tensor's byte range): about
6x faster than faulting in an mmap page by page, and resident memory follows the tensors in
flight, not the size of the checkpoint (touched mmap pages would count as ours until unmapped).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from .errors import IngestError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"

# safetensors dtype tag -> numpy dtype (bf16 as ml_dtypes so bits are never reinterpreted)
SAFETENSORS_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
FLOAT_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}

# safetensors' own limit on the JSON header
MAX_HEADER_BYTES = 100_000_000

CORRUPT_HINT = "the file is truncated or corrupt: download or save the checkpoint again"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: Path
    offset: int | None = None  # absolute byte offset in a safetensors file

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def find_weight_files(model_dir: Path) -> tuple[str, list[Path], Path | None]:
    """(format, files in index order, index path). safetensors is preferred over .bin when both exist."""
    if (model_dir / SAFETENSORS_INDEX).is_file():
        index = model_dir / SAFETENSORS_INDEX
        return "safetensors", _files_from_index(index), index
    if (model_dir / SAFETENSORS_SINGLE).is_file():
        return "safetensors", [model_dir / SAFETENSORS_SINGLE], None
    if (model_dir / TORCH_INDEX).is_file():
        index = model_dir / TORCH_INDEX
        return "torch", _files_from_index(index), index
    if (model_dir / TORCH_SINGLE).is_file():
        return "torch", [model_dir / TORCH_SINGLE], None
    raise IngestError(
        "no weights found (model.safetensors, model.safetensors.index.json, pytorch_model.bin)",
        path=model_dir,
        hint="point at the directory written by save_pretrained",
    )


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IngestError(f"unreadable weight index: {exc}", path=index, hint=CORRUPT_HINT) from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise IngestError("weight index has an empty weight_map", path=index, hint=CORRUPT_HINT)
    for name, file_name in weight_map.items():
        # a shard is a plain file name next to the index, never a path that leaves the directory
        if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name \
                or file_name in (".", ".."):
            raise IngestError(f"weight index maps {name} to {file_name!r}, not a file name", path=index,
                              hint=CORRUPT_HINT)
    return weight_map


def _files_from_index(index: Path) -> list[Path]:
    files: list[Path] = []
    for file_name in _read_index(index).values():
        path = index.parent / file_name
        if path not in files:
            files.append(path)
    for path in files:
        if not path.is_file():
            raise IngestError(f"the index names a shard that is missing: {path.name}", path=path,
                              hint=f"copy {path.name} next to {index.name} or fix the index")
    return files


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """Every tensor of a safetensors file, validated as strictly as the safetensors library does.

    Our own checks come first so that each defect gets a message that names the tensor; then
    safetensors' parser (safe_open) sees the same file, so nothing it would refuse gets through.
    The data itself is read later with positioned reads (see `_read_safetensors`).
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its header")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError("header length exceeds the file")
            header = json.loads(fh.read(length))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise IngestError(f"not a valid safetensors file ({_first_line(exc)})", path=path, hint=CORRUPT_HINT) from exc
    infos = _parse_header(header, path, data_start=8 + length, data_size=size - 8 - length)
    _check_with_safetensors(path)
    return infos


def _parse_header(header: object, path: Path, data_start: int, data_size: int) -> list[TensorInfo]:
    """The safetensors format's rules: a JSON object of {dtype, shape, data_offsets} entries whose
    byte ranges are non-negative, match the shape, and tile the data buffer exactly (no overlap, no gap)."""
    def bad(message: str) -> IngestError:
        return IngestError(f"invalid safetensors header: {message}", path=path, hint=CORRUPT_HINT)

    if not isinstance(header, dict):
        raise bad(f"a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    infos: list[TensorInfo] = []
    ranges: list[tuple[int, int, str]] = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
            raise bad(f"tensor {name} needs dtype, shape and data_offsets")
        shape, offsets = meta["shape"], meta["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"tensor {name} has shape {shape!r} (dimensions must be integers >= 0)")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
                or offsets[0] > offsets[1]:
            raise bad(f"tensor {name} has data_offsets {offsets!r} (two integers 0 <= begin <= end)")
        dtype = SAFETENSORS_DTYPES.get(meta["dtype"]) if isinstance(meta["dtype"], str) else None
        if dtype is None:
            raise IngestError(f"tensor {name} has unsupported dtype {meta['dtype']}", path=path,
                              hint="save the model in float32, float16 or bfloat16")
        start, end = offsets
        if end > data_size:
            raise IngestError(f"tensor {name} lies outside the file (truncated?)", path=path, hint=CORRUPT_HINT)
        if end - start != math.prod(shape) * dtype.itemsize:
            raise bad(f"tensor {name} spans {end - start} bytes but its shape {shape} needs "
                      f"{math.prod(shape) * dtype.itemsize}")
        ranges.append((start, end, name))
        infos.append(TensorInfo(name, tuple(shape), dtype, path, offset=data_start + start))
    position = 0
    for start, end, name in sorted(ranges):
        if start != position:
            raise bad(f"tensor {name} starts at byte {start}, expected {position} (overlapping or gapped data)")
        position = end
    if position != data_size:
        raise bad(f"the data section has {data_size - position} bytes that belong to no tensor")
    return infos


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_with_safetensors(path: Path) -> None:
    """safetensors' own parser as the last word on the header (it opens the file, reads no tensor)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise IngestError(f"not a valid safetensors file ({_first_line(exc)})", path=path, hint=CORRUPT_HINT) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TensorFile:
    """One weights file (safetensors, or a torch .bin state dict) by tensor name, read on demand.

    Used for adapter weights: the same header policy and the same .bin loader as full models.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._state: dict | None = None
        if self.path.suffix == ".safetensors":
            # sorted, as safe_open().keys() lists them
            self.infos = {i.name: i for i in sorted(read_safetensors_header(self.path), key=lambda i: i.name)}
        else:
            self._state = _torch_load(self.path)
            self.infos = {name: TensorInfo(name, tuple(t.shape), _torch_to_numpy_dtype(t.dtype, self.path, name),
                                           self.path) for name, t in self._state.items()}

    def names(self) -> list[str]:
        return list(self.infos)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.infos[name].shape

    def read(self, name: str) -> np.ndarray:
        """One tensor in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
        if self._state is None:
            return _read_safetensors([self.infos[name]])[name]
        return _torch_to_numpy(self._state[name])

    def close(self) -> None:
        self._state = None


class WeightReader:
    """Every tensor of a checkpoint by name, in the loader order MLC uses (index/file order)."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self.format, self.files, self.index = find_weight_files(self.model_dir)
        self.tensors: dict[str, TensorInfo] = {}
        if self.format == "safetensors":
            self._scan_safetensors()
        else:
            self._scan_torch()

    # MLC's order: names grouped by file (files in order of first appearance in the index), and
    # within a file in weight_map order; a single safetensors file uses safe_open().keys() (sorted).
    def _scan_safetensors(self) -> None:
        by_file: dict[Path, dict[str, TensorInfo]] = {}
        for path in self.files:
            by_file[path] = {info.name: info for info in read_safetensors_header(path)}
        if self.index is not None:
            for name, file_name in _read_index(self.index).items():
                info = by_file[self.index.parent / file_name].get(name)
                if info is None:
                    raise IngestError(f"the index lists {name} but {file_name} does not contain it",
                                      path=self.index.parent / file_name, hint=CORRUPT_HINT)
                self.tensors[name] = info
        else:
            (path,) = self.files
            for name in sorted(by_file[path]):
                self.tensors[name] = by_file[path][name]
        self._group_by_file()

    def _scan_torch(self) -> None:
        names_by_file: dict[Path, list[str]] | None = None
        if self.index is not None:
            names_by_file = {}
            for name, file_name in _read_index(self.index).items():
                names_by_file.setdefault(self.index.parent / file_name, []).append(name)
        for path in self.files:
            state = _torch_load(path)
            order = names_by_file[path] if names_by_file is not None else list(state)
            for name in order:
                if name not in state:
                    raise IngestError(f"the index lists {name} but {path.name} does not contain it", path=path,
                                      hint=CORRUPT_HINT)
                t = state[name]
                self.tensors[name] = TensorInfo(name, tuple(t.shape), _torch_to_numpy_dtype(t.dtype, path, name), path)
            del state
        self._group_by_file()

    def _group_by_file(self) -> None:
        order: dict[Path, list[str]] = {}
        for name, info in self.tensors.items():
            order.setdefault(info.file, []).append(name)
        self.file_order = order

    def names(self) -> list[str]:
        return list(self.tensors)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one tensor (axis 0), without reading the rest."""
        info = self.tensors[name]
        rows = max(0, min(stop, info.shape[0]) - start)
        row_shape = tuple(info.shape[1:])
        if self.format == "safetensors":
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * info.dtype.itemsize
            part = TensorInfo(name, (rows,) + row_shape, info.dtype, info.file,
                              offset=info.offset + start * row_bytes)
            return _read_safetensors([part])[name]
        state = _torch_load(info.file)
        return _torch_to_numpy(state[name][start:start + rows]).copy()

    def read(self, names: list[str]) -> list[np.ndarray]:
        """Read tensors (opening each needed file once), as numpy arrays in their stored dtype."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.tensors[name].file, []).append(name)
        out: dict[str, np.ndarray] = {}
        for path, file_names in by_file.items():
            if self.format == "safetensors":
                out.update(_read_safetensors([self.tensors[n] for n in file_names]))
            else:
                state = _torch_load(path)
                for name in file_names:
                    out[name] = _torch_to_numpy(state[name])
                del state
        return [out[n] for n in names]


def _read_safetensors(infos: list[TensorInfo]) -> dict[str, np.ndarray]:
    out = {}
    with infos[0].file.open("rb", buffering=0) as fh:
        for info in infos:
            array = np.empty(info.shape, dtype=info.dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            got = os.preadv(fh.fileno(), [view], info.offset) if info.nbytes else 0
            while 0 < got < info.nbytes:  # preadv may return short on some filesystems
                more = os.preadv(fh.fileno(), [view[got:]], info.offset + got)
                if more <= 0:
                    break
                got += more
            if got != info.nbytes:
                raise IngestError(f"{info.file.name} ended inside tensor {info.name}", path=info.file,
                                  hint=CORRUPT_HINT)
            out[info.name] = array
    return out


def _torch_load(path: Path) -> dict:
    """A .bin state dict: weights_only (never run pickled code), memory-mapped when the format allows."""
    import torch

    try:
        # mmap: tensors are paged in only when read; the old (non-zip) torch format cannot be mapped.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            raise IngestError(f"cannot load {path.name}: {_first_line(exc)}", path=path,
                              hint=CORRUPT_HINT + " (only plain tensor state dicts are accepted)") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise IngestError(f"{path.name} is not a state dict of tensors", path=path,
                          hint="re-save it with save_pretrained(safe_serialization=True)")
    return state


def _torch_to_numpy_dtype(dtype, path: Path, name: str) -> np.dtype:
    import torch

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
             torch.float64: np.float64, torch.int64: np.int64, torch.int32: np.int32, torch.int8: np.int8,
             torch.uint8: np.uint8, torch.bool: np.bool_}
    if dtype not in table:
        raise IngestError(f"tensor {name} has unsupported dtype {dtype}", path=path,
                          hint="save the model in float32, float16 or bfloat16")
    return np.dtype(table[dtype])


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
