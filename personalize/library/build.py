"""Export the graph for one (architecture config, quantization, target), attach `_metadata`, compile.

The compiled library takes exactly the artifact's parameters: `export_tvm`'s parameter list is
checked against `quantize.library_params(arch.source_params(cfg), scheme)` before compiling.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
from tvm import relax

from personalize.arch import LibraryConfig, get_architecture, library_key
from quantize import library_params
from quantize.schemes import get_scheme

from .errors import LibraryError
from .model import CausalLM, GraphOptions

TARGETS = ("llvm", "cuda")


def make_target(kind: str) -> tvm.target.Target:
    """The compile target. CPU: the host CPU (so AVX-512 etc. are used); CUDA: sm_90 (H100/H200)."""
    if kind == "llvm":
        cpu = tvm.target.codegen.llvm_get_system_cpu()
        return tvm.target.Target({"kind": "llvm", "mcpu": cpu} if cpu and cpu != "generic" else "llvm")
    if kind == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    raise LibraryError(f"unknown target {kind!r}", hint="use --target llvm or --target cuda")


def param_json(name: str, shape, dtype: str) -> dict:
    dims = [int(d) if isinstance(d, (int, tvm.tirx.IntImm)) else str(d) for d in shape]
    return {"name": name, "shape": dims, "dtype": str(dtype)}


def expected_params(config: LibraryConfig, quantization: str) -> list[dict]:
    """The converter's parameter list: what the artifact holds, so what the graph must take."""
    arch = get_architecture(config.model_type)
    return [p.to_json() for p in library_params(arch.source_params(config), get_scheme(quantization))]


def context_limits(config: LibraryConfig) -> tuple[int, int]:
    """(context_window_size, prefill_chunk_size) the library is compiled for.

    Mistral's sliding window is honoured by capping the usable context at the window, so
    attention never needs to slide and results stay exact.
    """
    c = config.model_config
    ctx = int(c.get("context_window_size", -1))
    sliding = int(c.get("sliding_window_size", -1) or -1)
    if sliding > 0 and (ctx <= 0 or ctx > sliding):
        ctx = sliding
    chunk = int(c.get("prefill_chunk_size", -1))
    if chunk <= 0 or chunk > ctx:
        chunk = ctx
    return ctx, chunk


@dataclass
class ExportedLibrary:
    mod: tvm.IRModule
    metadata: dict


def graph_params(config: LibraryConfig, quantization: str, target_kind: str = "llvm") -> list[dict]:
    """The graph's parameter list (name, shape with symbols, dtype), without exporting it."""
    model = CausalLM(config, GraphOptions(get_scheme(quantization), make_target(target_kind)))
    return [param_json(n, p.shape, p.dtype) for n, p in model.named_parameters()]


def export(config: LibraryConfig, quantization: str, target_kind: str) -> ExportedLibrary:
    scheme = get_scheme(quantization)
    target = make_target(target_kind)
    opts = GraphOptions(scheme, target)
    model = CausalLM(config, opts)
    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    params = [param_json(n, p.shape, p.dtype) for n, p in named_params]
    if params != graph_params(config, quantization, target_kind):
        raise LibraryError("export_tvm reordered the parameters", hint="this is a bug in the graph definition")
    expected = expected_params(config, quantization)
    if expected != params:
        diff = [f"{a} != {b}" for a, b in zip(expected, params) if a != b][:3] or ["lengths differ"]
        raise LibraryError(f"graph parameters differ from the converter's list: {'; '.join(diff)}",
                           hint="the architecture definition and the graph disagree; this is a bug")
    ctx, chunk = context_limits(config)
    metadata = {
        "model_type": config.model_type,
        "quantization": quantization,
        "library_key": library_key(config, quantization),
        "config": config.compiled,
        "symbolic_vocab": config.symbolic_vocab,
        "vocab_size": None if config.symbolic_vocab else config.vocab_size,
        "context_window_size": ctx,
        "prefill_chunk_size": chunk,
        "sliding_window_size": -1,
        "max_batch_size": 1,
        "kv_state_kind": "kv_cache",
        "activation_dtype": opts.act_dtype,
        "target": target_kind,
        "tvm": tvm.__version__,
        "params": params,
    }
    return ExportedLibrary(attach_metadata(mod, metadata), metadata)


def attach_metadata(mod: tvm.IRModule, meta: dict) -> tvm.IRModule:
    """Add `_metadata()` returning the JSON string (works in runtime-only processes too)."""
    bb = relax.BlockBuilder()
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(meta, sort_keys=True)))
    mod["_metadata"] = bb.finalize()["_metadata"]
    return mod


def cpu_pipeline(target: tvm.target.Target, schedule_reductions: bool = True):
    """Fusion + dlight CPU rules for what the hand-written kernels do not cover (norms, softmax)."""
    from tvm.relax.backend.cpu_generic import pipeline as cp
    from tvm.s_tir import dlight as dl

    rules = [dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())] if schedule_reductions else []

    @tvm.transform.module_pass(opt_level=0)
    def pipe(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                cp.library_dispatch_passes(target) + cp.legalize_passes(target) + rules
                + cp.dataflow_lower_passes(target) + cp.finalize_passes(target))(mod)

    return pipe


def cuda_pipeline(target: tvm.target.Target):
    """MLC's GPU recipe: fuse, then dlight GEMV / Reduction / GeneralReduction / Fallback.

    dl.gpu.Matmul is left out: in apache-tvm 0.27 it segfaults on the fused dequantize+matmul
    PrimFunc of the prefill path once K >= 512 (reproduced with SmolLM2's hidden 576), which would
    kill the whole process. Prefill matmuls then get the Fallback schedule; decode (GEMV) is unaffected.
    """
    from tvm.relax.backend.cuda import pipeline as gp
    from tvm.s_tir import dlight as dl

    legalize = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                        dl.gpu.Fallback())]

    @tvm.transform.module_pass(opt_level=0)
    def pipe(mod, _ctx):
        with target:
            seq = (gp.library_dispatch_passes(target) + legalize
                   + gp.dataflow_lower_passes(target) + gp.finalize_passes(target))
            return tvm.transform.Sequential(seq)(mod)

    return pipe


def compile_library(config: LibraryConfig, quantization: str, target_kind: str, output: Path,
                    fast: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Compile to a shared library at `output` (written as given; callers handle atomicity).

    `fast=False` skips the dlight CPU reduction schedules (quicker compile, for tests).
    """
    t0 = time.perf_counter()
    exported = export(config, quantization, target_kind)
    target = make_target(target_kind)
    pipe = cpu_pipeline(target, schedule_reductions=fast) if target_kind == "llvm" else cuda_pipeline(target)
    ex = tvm.compile(exported.mod, target, relax_pipeline=pipe)
    t1 = time.perf_counter()
    ex.export_library(str(output))
    if log:
        log(f"compiled {config.model_type}/{quantization} for {target_kind} in {t1 - t0:.1f}s "
            f"(+{time.perf_counter() - t1:.1f}s link)")
    return exported.metadata

