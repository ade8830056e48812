"""Fetch and build llama.cpp's tools into the benchmark cache (never committed).

Source: the llama-cpp-python sdist from PyPI (the only code index reachable from CI machines
without GitHub), which vendors a pinned llama.cpp at vendor/llama.cpp, including
convert_hf_to_gguf.py and its matching gguf-py. Built once with CMake (Release, GGML_NATIVE,
no curl/openssl, static), reused afterwards; ``build-info.json`` records how long it took.

Other benchmarks can call ``ensure_llamacpp(cache_dir(), targets=(..., "llama-bench"))``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = os.environ.get("PERSONALIZE_BENCH_LLAMA_CPP_PYTHON", "0.3.36")
DEFAULT_TARGETS = ("llama-quantize", "llama-bench", "llama-completion")
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF")


class LlamaCppSetupError(RuntimeError):
    """llama.cpp could not be fetched or built; ``hint`` says what to install or fix."""

    def __init__(self, message: str, path: Path | None = None, hint: str = ""):
        self.path, self.hint = path, hint
        super().__init__(f"{message}{f' ({path})' if path else ''}{f': {hint}' if hint else ''}")


def cache_dir() -> Path:
    """$PERSONALIZE_BENCH_CACHE, else ~/.cache/personalize-bench."""
    env = os.environ.get("PERSONALIZE_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "personalize-bench"


@dataclass
class LlamaCpp:
    root: Path          # <cache>/llama.cpp
    src: Path           # the vendored llama.cpp source tree
    build: Path

    @property
    def convert_script(self) -> Path:
        return self.src / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        """The converter's own gguf-py (put on PYTHONPATH so its version matches the script)."""
        return self.src / "gguf-py"

    def tool(self, name: str) -> Path:
        return self.build / "bin" / name

    def build_info(self) -> dict:
        p = self.root / "build-info.json"
        return json.loads(p.read_text()) if p.is_file() else {}


def missing_build_tools() -> list[str]:
    need = {"cmake": ["cmake"], "C compiler": ["cc", "gcc", "clang"], "C++ compiler": ["c++", "g++", "clang++"],
            "make or ninja": ["ninja", "make"], "tar": ["tar"]}
    return [what for what, names in need.items() if not any(shutil.which(n) for n in names)]


def _run(argv: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        rc = subprocess.call(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise LlamaCppSetupError(f"`{' '.join(argv)}` failed (exit {rc})", log,
                                 f"see the log; last lines:\n{tail}")


def _fetch_source(root: Path, log: Path, say) -> Path:
    dl = root / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        say(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (vendors llama.cpp) ...")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dl)], log)
    unpacked = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    src = unpacked / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        say(f"unpacking {sdist.name} ...")
        # -m: give files the current mtime; the archive's future-dated mtimes make ninja loop.
        _run(["tar", "-xzmf", str(sdist), "-C", str(root)], log)
    # vendor/llama.cpp/.git is a submodule pointer into a .git that the sdist does not ship;
    # CMake's build-info step depends on it and ninja then re-runs configure forever.
    dangling = src / ".git"
    if dangling.is_file():
        dangling.unlink()
    return src


def ensure_llamacpp(cache: Path | None = None, targets: tuple[str, ...] = DEFAULT_TARGETS,
                    jobs: int = 2, say=print) -> LlamaCpp:
    """Return a built llama.cpp, building what is missing. Raises LlamaCppSetupError."""
    root = (cache or cache_dir()) / "llama.cpp"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "setup.log"
    build = root / "build"
    unpacked_src = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    have = LlamaCpp(root, unpacked_src, build)
    if unpacked_src.is_dir() and all(have.tool(t).is_file() for t in targets):
        return have
    missing = missing_build_tools()
    if missing:
        raise LlamaCppSetupError(f"cannot build llama.cpp: {', '.join(missing)} not found", None,
                                 "install them (Debian/Ubuntu: apt-get install cmake build-essential ninja-build) "
                                 "or run with --skip-llamacpp")
    src = _fetch_source(root, log, say)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    say(f"building llama.cpp {', '.join(targets)} with -j{jobs} (several minutes; log: {log}) ...")
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    _run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS], log)
    t_conf = time.perf_counter() - t0
    _run(["cmake", "--build", str(build), "--config", "Release", f"-j{jobs}", "--target", *targets], log)
    t_total = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = have.build_info()
    info.update({"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "targets": sorted(set(info.get("targets", [])) |
                 set(targets)), "jobs": jobs, "configure_s": round(t_conf, 1), "build_s": round(t_total, 1),
                 "build_user_s": round(ru1.ru_utime - ru0.ru_utime, 1), "build_sys_s": round(ru1.ru_stime - ru0.ru_stime, 1),
                 "cmake_flags": list(CMAKE_FLAGS), "cpu_count": os.cpu_count()})
    (root / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
    say(f"llama.cpp built in {t_total:.0f} s")
    return LlamaCpp(root, src, build)
