"""Read the metadata a compiled MLC model library embeds.

`mlc_llm compile` bakes `_metadata()` into every library: one JSON object (model_type, quantization,
context_window_size, prefill_chunk_size, sliding_window_size, kv_cache, params = [{name, shape, dtype}])
stored as a string constant. In a .wasm it sits in the data section; in a .so/.dylib in .rodata; in the
.tar of static objects the iOS/Android apps link, inside one of the members (tar does not compress).
So one reader fits all: find `{"model_type"` in the bytes and let json.JSONDecoder.raw_decode take the
object that starts there.
"""

from __future__ import annotations

import json
import mmap
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from personalize_errors import UserError

MARKER = b'{"model_type"'
SUFFIXES = (".wasm", ".so", ".dylib", ".dll", ".tar", ".a", ".o")


class LibraryMetadataError(UserError):
    """The file is not a compiled MLC model library (or cannot be read)."""


def metadata_from_bytes(data: bytes | mmap.mmap, source: str = "library") -> dict:
    decoder = json.JSONDecoder()
    start = data.find(MARKER)
    while start != -1:
        end = data.find(b"\x00", start)  # the C string ends at NUL; wasm data has one after it too
        chunk = bytes(data[start:end if end != -1 else len(data)])
        try:
            doc, _ = decoder.raw_decode(chunk.decode("utf-8", errors="replace"))
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("params"), list):
            return doc
        start = data.find(MARKER, start + 1)
    raise LibraryMetadataError(f"no MLC model metadata in {source}", path=source,
                               hint="pass a model library built by `mlc_llm compile` (.wasm, .so, .dylib or "
                               "the .tar of a system library)")


def read_library_metadata(path: Path) -> dict:
    """The `_metadata` JSON of a compiled library file."""
    path = Path(path)
    if not path.is_file():
        raise LibraryMetadataError(f"library {path} does not exist", path=path,
                                   hint="pass the path of a compiled MLC model library, or its https URL")
    with open(path, "rb") as handle:
        if path.stat().st_size == 0:
            raise LibraryMetadataError(f"library {path} is empty", path=path, hint="download it again")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return metadata_from_bytes(data, str(path))


@contextmanager
def local_library(ref: str) -> Iterator[Path]:
    """A path for a library given as a file path or an https URL (downloaded to a temp file)."""
    if ref.startswith(("https://", "http://")):
        name = ref.rsplit("/", 1)[-1] or "library.wasm"
        with tempfile.TemporaryDirectory(prefix="personalize-lib-") as tmp:
            target = Path(tmp) / name
            try:
                with urllib.request.urlopen(ref, timeout=120) as response, open(target, "wb") as out:
                    while block := response.read(1 << 20):
                        out.write(block)
            except OSError as exc:
                raise LibraryMetadataError(f"cannot download {ref}: {exc}", path=ref,
                                           hint="check the URL, or download the file and pass its path") from exc
            yield target
        return
    yield Path(ref).expanduser()


LIB_SYMBOL_SUFFIX = b"___tvm_ffi__library_bin"


def system_lib_prefix(path: Path) -> str | None:
    """The system-lib prefix of a static model library (.tar/.a): `<prefix>___tvm_ffi__library_bin` is the
    symbol `mlc_llm package` looks for (python/mlc_llm/interface/package.py)."""
    import re

    data = Path(path).read_bytes()
    m = re.search(rb"([A-Za-z_][A-Za-z0-9_]*?)" + re.escape(LIB_SYMBOL_SUFFIX), data)
    if not m:
        return None
    return m.group(1).decode().lstrip("_") or None
