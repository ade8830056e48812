"""Run an artifact's weights on a compiled library: prefill, decode, all-position logits.

Imports only `tvm.runtime` (works with TVM_USE_RUNTIME_LIB=1, i.e. without the compiler library).
One sequence at a time through TVM's paged KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm.runtime.vm  # noqa: F401 - not imported by `import tvm` in runtime-only mode
from tvm.runtime import ShapeTuple

from .errors import RuntimeUserError, TokenRangeError

PAGE_SIZE = 16
DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_PREFILL_CHUNK = 512


def _ensure_cuda_loader() -> None:
    """Runtime-only mode loads libtvm_runtime.so alone; CUDA modules need libtvm_runtime_cuda.so."""
    if tvm.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True) is None:
        import ctypes
        import os

        path = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
        if os.path.exists(path):
            ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
    _register_cuda_jit()


def _register_cuda_jit() -> None:
    """TVM 0.27 ships CUDA kernels as source and compiles them when the library is loaded, through
    `tvm_callback_cuda_compile`. Its default asks the compiler's current target for the GPU
    architecture, which a runtime-only process does not have; name the device's architecture."""
    import tvm_ffi
    from tvm.support import nvcc

    dev = tvm.cuda(0)
    if not dev.exist:
        return
    arch = "sm_" + dev.compute_version.replace(".", "")

    def compile_for_device(code, *_):
        return nvcc.compile_cuda(code, target_format="cubin", arch=arch, compiler="nvrtc")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_for_device, override=True)


def device_for(name: str):
    if name == "cpu":
        return tvm.cpu()
    if name == "cuda":
        _ensure_cuda_loader()
        dev = tvm.cuda(0)
        if not dev.exist:
            raise RuntimeUserError("no CUDA device is visible", hint="run with --device cpu")
        return dev
    raise RuntimeUserError(f"unknown device {name!r}", hint="use --device cpu or --device cuda")


def read_library_metadata(lib_path: Path, device: str = "cpu") -> dict[str, Any]:
    dev = device_for(device)  # first: registers the CUDA module loader in runtime-only mode
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)
    return json.loads(str(vm["_metadata"]()))


class Engine:
    """A library loaded on a device with one artifact's weights and a KV cache."""

    def __init__(self, lib_path: Path, artifact_dir: Path, vocab_size: int, device: str = "cpu",
                 metadata: dict[str, Any] | None = None, max_seq_len: int | None = None):
        self.dev = device_for(device)
        self.vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.dev)
        self.metadata = metadata or json.loads(str(self.vm["_metadata"]()))
        self.vocab_size = vocab_size
        self.params = self._load_params(artifact_dir)
        ctx = int(self.metadata["context_window_size"])
        self.max_seq_len = min(ctx, max_seq_len or DEFAULT_MAX_SEQ_LEN)
        self.prefill_chunk = max(1, min(int(self.metadata["prefill_chunk_size"]), self.max_seq_len,
                                        DEFAULT_PREFILL_CHUNK))
        self.kv = self.vm["create_paged_kv_cache"](ShapeTuple([1]), ShapeTuple([self.max_seq_len]),
                                                   ShapeTuple([self.prefill_chunk]), ShapeTuple([PAGE_SIZE]),
                                                   ShapeTuple([0]))
        f = tvm.get_global_func
        self._add_seq = f("vm.builtin.kv_state_add_sequence")
        self._clear = f("vm.builtin.kv_state_clear")
        self._begin = f("vm.builtin.kv_state_begin_forward")
        self._end = f("vm.builtin.kv_state_end_forward")
        self.length = 0  # tokens in the current sequence
        self.reset()

    def _load_params(self, artifact_dir: Path) -> list:
        # TVM's C++ loader: reads tensor-cache.json, decodes f32-to-bf16 records, copies to the device.
        load = tvm.get_global_func("vm.builtin.tensor_cache.load")
        by_name = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")
        clear = tvm.get_global_func("vm.builtin.tensor_cache.clear")
        load(str(artifact_dir), self.dev.dlpack_device_type(), self.dev.index)
        try:
            return by_name([p["name"] for p in self.metadata["params"]])
        finally:
            clear()

    def reset(self) -> None:
        self._clear(self.kv)
        self._add_seq(self.kv, 0)
        self.length = 0

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise TokenRangeError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                                  hint="use token ids from this artifact's tokenizer")
        if self.length + ids.size > self.max_seq_len:
            raise RuntimeUserError(f"sequence of {self.length + ids.size} tokens exceeds the context window "
                                   f"{self.max_seq_len}", hint="use a shorter prompt or fewer max tokens")

    def _embed(self, ids: np.ndarray):
        emb = self.vm["embed"](tvm.runtime.tensor(ids.astype(np.int32), self.dev), self.params)
        return emb._create_view((1, ids.size, emb.shape[-1]))

    def prefill(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Append tokens to the sequence; logits of the last token [vocab] (or of every token [n, vocab])."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        self._check_ids(ids)
        outs = []
        for start in range(0, ids.size, self.prefill_chunk):
            chunk = ids[start:start + self.prefill_chunk]
            self._begin(self.kv, ShapeTuple([0]), ShapeTuple([chunk.size]))
            if all_logits:
                pos = tvm.runtime.tensor(np.arange(chunk.size, dtype=np.int32), self.dev)
                logits, self.kv = self.vm["batch_prefill"](self._embed(chunk), pos, self.kv, self.params)
            else:
                logits, self.kv = self.vm["prefill"](self._embed(chunk), self.kv, self.params)
            self._end(self.kv)
            self.length += chunk.size
            if all_logits or start + self.prefill_chunk >= ids.size:
                outs.append(logits.numpy()[0])
        out = np.concatenate(outs, axis=0)
        return out[:, : self.vocab_size] if all_logits else out[-1, : self.vocab_size]

    def decode(self, token_id: int) -> np.ndarray:
        ids = np.asarray([token_id], dtype=np.int64)
        self._check_ids(ids)
        self._begin(self.kv, ShapeTuple([0]), ShapeTuple([1]))
        logits, self.kv = self.vm["decode"](self._embed(ids), self.kv, self.params)
        self._end(self.kv)
        self.length += 1
        return logits.numpy()[0, -1, : self.vocab_size]

    def logits(self, token_ids) -> np.ndarray:
        """Logits for every position of a fresh sequence [len, vocab]."""
        self.reset()
        try:
            return self.prefill(token_ids, all_logits=True)
        finally:
            self.reset()
