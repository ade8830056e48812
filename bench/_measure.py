"""Run one command in a subprocess and measure it: wall time and peak memory.

Peak RSS is the larger of two numbers:
- the kernel's high-water mark (``os.wait4`` rusage ``ru_maxrss``): exact, misses no spike, but it
  is the maximum of *single* processes (the child, or one descendant it waited for), and
- a sampler thread's peak of the summed VmRSS of the whole process tree (every 20 ms): a tool that
  runs a worker process next to its main one uses both at once.
Summing RSS counts pages shared between the processes twice, so the figure errs high.
The sampler also splits RSS into anonymous pages (what the tool allocated) and file-backed pages
(mmap'd weights: page cache that counts as the process's RSS). Linux only.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import psutil


@dataclass
class Measurement:
    """One timed run of one command."""

    label: str
    argv: list[str]
    wall_s: float
    peak_rss_bytes: int             # max(kernel high-water mark, sampled tree sum): what was resident at once
    max_process_rss_bytes: int      # kernel ru_maxrss: the largest single process of the tree (exact)
    peak_tree_rss_bytes: int        # sampled max of sum(VmRSS) over the process tree (a worker process counts)
    peak_anon_bytes: int            # sampled max of sum(RssAnon) over the process tree
    peak_file_bytes: int            # sampled max of sum(RssFile + RssShmem) over the process tree
    user_s: float
    sys_s: float
    returncode: int
    log_path: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["command"] = shell_line(self.argv)
        return doc


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; carries the log so the caller can show its tail."""

    def __init__(self, measurement: Measurement, hint: str = ""):
        self.measurement = measurement
        self.path = measurement.log_path
        self.hint = hint
        tail = log_tail(measurement.log_path)
        super().__init__(f"{measurement.label}: `{shell_line(measurement.argv)}` exited "
                         f"{measurement.returncode}{' (' + hint + ')' if hint else ''}\n{tail}")


def shell_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    return f"{prefix} {cmd}" if prefix else cmd


def log_tail(path: str | None, lines: int = 25) -> str:
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in out:
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return out


class _TreeSampler(threading.Thread):
    """Polls the RSS split of a process tree until stopped (max of the per-sample sums)."""

    def __init__(self, pid: int, interval_s: float = 0.02, include_root: bool = True):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.include_root = pid, interval_s, include_root
        self.peak_anon = self.peak_file = self.peak_total = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._halt.is_set():
            try:
                pids = ([self.pid] if self.include_root else []) + [c.pid for c in root.children(recursive=True)]
            except psutil.Error:
                break
            anon = file = total = 0
            for pid in pids:
                st = _status_kb(pid, ("RssAnon", "RssFile", "RssShmem", "VmRSS"))
                anon += st["RssAnon"]
                file += st["RssFile"] + st["RssShmem"]
                total += st["VmRSS"]
            self.peak_anon = max(self.peak_anon, anon * 1024)
            self.peak_file = max(self.peak_file, file * 1024)
            self.peak_total = max(self.peak_total, total * 1024)
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


# argv[1] = where to write the child's rusage as JSON, argv[2:] = the command.
_LAUNCHER = (
    "import json, os, sys\n"
    "try:\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(str(e) + '\\n'); os._exit(127)\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'status': status, 'ru_maxrss': ru.ru_maxrss, 'ru_utime': ru.ru_utime,"
    " 'ru_stime': ru.ru_stime}, f)\n"
)


def run_measured(label: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, log_path: str | Path | None = None,
                 sync_first: bool = True, check: bool = True, hint: str = "") -> Measurement:
    """Run argv to completion; stdout+stderr go to log_path (or are discarded).

    sync_first flushes dirty pages left by earlier runs, so a previous run's writeback is not
    billed to this one.
    """
    argv = [str(a) for a in argv]
    if sync_first:
        os.sync()
    load_before = os.getloadavg()[0]  # other work on the machine inflates wall time, not CPU time
    full_env = dict(os.environ)
    full_env.update(env or {})
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        # A small launcher forks the command: on Linux a child's ru_maxrss starts at its parent's
        # RSS at fork (exec keeps the old mm's high-water mark), so forking from a large process
        # (pytest, a bench that wrote a model) would inflate the number. The launcher is ~10 MB.
        with tempfile.NamedTemporaryFile("r", suffix=".json") as usage_file:
            proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, usage_file.name, *argv], env=full_env,
                                    cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            sampler = _TreeSampler(proc.pid, include_root=False)
            sampler.start()
            proc.wait()
            wall = time.perf_counter() - t0
            sampler.stop()
            usage = json.loads(usage_file.read() or "{}")
        if not usage:
            raise RuntimeError(f"could not start {argv[0]} (see {log_path or 'the log'})")
        ru = types.SimpleNamespace(**usage)
        proc.returncode = os.waitstatus_to_exitcode(ru.status)
    finally:
        if log_path:
            log.close()
    m = Measurement(label=label, argv=argv, wall_s=wall,
                    peak_rss_bytes=max(ru.ru_maxrss * 1024, sampler.peak_total),
                    max_process_rss_bytes=ru.ru_maxrss * 1024, peak_tree_rss_bytes=sampler.peak_total,
                    peak_anon_bytes=sampler.peak_anon, peak_file_bytes=sampler.peak_file,
                    user_s=ru.ru_utime, sys_s=ru.ru_stime, returncode=proc.returncode,
                    log_path=str(log_path) if log_path else None, extra={"loadavg_1min_before": load_before})
    if check and not m.ok:
        raise CommandFailed(m, hint)
    return m


def warm_page_cache(paths: Sequence[Path], chunk: int = 16 << 20) -> int:
    """Read every file once (untimed) so the timed runs find the inputs in the page cache.

    Returns the bytes read. Without this the first tool to run pays the disk reads and the
    comparison measures the disk, not the converter.
    """
    total = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def machine_info() -> dict:
    """What the numbers were measured on (they mean nothing without it)."""
    import platform

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
            "python": sys.version.split()[0], "platform": platform.platform()}
