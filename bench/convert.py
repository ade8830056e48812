#!/usr/bin/env python
"""Conversion benchmark: `personalize add` against llama.cpp's convert_hf_to_gguf.py + llama-quantize.

For each input model it measures, with the inputs already in the page cache:
  personalize  `personalize add DIR --quantization q4f16_1 --output TMP --no-eval`
               (wall, peak RSS; per-stage seconds from the artifact's personalize.json "timings")
  llama.cpp    `convert_hf_to_gguf.py DIR --outtype f16` then `llama-quantize F16 Q4_0 Q4_0`
               (each: wall, peak RSS)
q4f16_1 and Q4_0 are the same class of format: 4-bit weights in groups of 32 with one f16 scale.

    python bench/convert.py --model both --repeat 3 --json-out bench-convert.json

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _llamacpp import LlamaCpp, LlamaCppSetupError, cache_dir, ensure_llamacpp  # noqa: E402
from _measure import (CommandFailed, Measurement, files_under, human_bytes, machine_info,  # noqa: E402
                      run_measured, shell_line, warm_page_cache)
from _synthetic_model import ensure_llama_1b  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SMOLLM2 = Path(os.environ.get("PERSONALIZE_SMOLLM2", "/work/cache/smollm2"))
QUANTIZATION = "q4f16_1"
GGUF_TYPE = "Q4_0"

# Acceptance target for the 1B model (issue "personalize add", item 9).
TARGET_SPEEDUP = 1.5
TARGET_RSS_FRACTION = 0.5
TARGET_RSS_BYTES = 1.5e9


def git_revision() -> str:
    """The commit personalize ran at (+ '-dirty' with local changes): the code moves fast."""
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def personalize_argv() -> list[str]:
    """The installed console script next to this interpreter, else the module entry point."""
    script = Path(sys.executable).parent / "personalize"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from personalize.cli import main; main()"]


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in files_under(path))


def read_timings(artifact: Path) -> dict | None:
    p = artifact / "personalize.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text()).get("timings")


def run_personalize(model_dir: Path, work: Path, tag: str, keep: bool) -> Measurement:
    out = work / f"personalize-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    argv = personalize_argv() + ["add", str(model_dir), "--quantization", QUANTIZATION, "--output", str(out),
                                 "--no-eval", "--quiet"]
    # A private registry home, so the benchmark never touches the user's store.
    env = {"PERSONALIZE_HOME": str(work / "personalize-home")}
    m = run_measured(f"personalize add [{tag}]", argv, env=env, cwd=REPO, log_path=work / f"personalize-{tag}.log",
                     hint="personalize add failed")
    m.extra["env"] = env
    m.extra["timings"] = read_timings(out)
    m.extra["output_bytes"] = dir_bytes(out)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return m


def run_llamacpp(lc: LlamaCpp, model_dir: Path, work: Path, tag: str, keep: bool,
                 pure: bool = False) -> tuple[Measurement, Measurement]:
    f16 = work / f"llamacpp-{tag}-f16.gguf"
    q4 = work / f"llamacpp-{tag}-{GGUF_TYPE.lower()}.gguf"
    for p in (f16, q4):
        p.unlink(missing_ok=True)
    env = {"PYTHONPATH": str(lc.gguf_py)}  # the converter's own gguf-py, matching its version
    conv = run_measured(f"convert_hf_to_gguf [{tag}]",
                        [sys.executable, str(lc.convert_script), str(model_dir), "--outtype", "f16", "--outfile",
                         str(f16)], env=env, cwd=lc.src, log_path=work / f"convert-{tag}.log",
                        hint="convert_hf_to_gguf.py failed")
    conv.extra.update(env=env, output_bytes=dir_bytes(f16))
    # By default llama-quantize keeps token_embd/output at Q6_K; --pure makes every tensor Q4_0.
    quant = run_measured(f"llama-quantize [{tag}]", [str(lc.tool("llama-quantize")), *(["--pure"] if pure else []),
                                                     str(f16), str(q4), GGUF_TYPE],
                         log_path=work / f"quantize-{tag}.log", hint="llama-quantize failed")
    quant.extra["output_bytes"] = dir_bytes(q4)
    if not keep:
        f16.unlink(missing_ok=True)
        q4.unlink(missing_ok=True)
    return conv, quant


def summarize(name: str, pz: list[Measurement], conv: list[Measurement], quant: list[Measurement]) -> dict:
    """Median wall time, max peak RSS over the repeats."""
    def cpu(m):
        return m.user_s + m.sys_s

    def med(ms, key=lambda m: m.wall_s):
        return statistics.median(key(m) for m in ms) if ms else None

    s: dict = {"model": name}
    if pz:
        stages: dict[str, float] = {}
        timings = [m.extra.get("timings") for m in pz]
        if all(timings):
            for k in timings[0]:
                vals = [t[k] for t in timings if isinstance(t.get(k), (int, float))]
                if vals:
                    stages[k] = statistics.median(vals)
        s["personalize"] = {"wall_s": med(pz), "cpu_s": med(pz, cpu),
                            "peak_rss_bytes": max(m.peak_rss_bytes for m in pz),
                            "max_process_rss_bytes": max(m.max_process_rss_bytes for m in pz),
                            "peak_anon_bytes": max(m.peak_anon_bytes for m in pz),
                            "peak_file_bytes": max(m.peak_file_bytes for m in pz),
                            "output_bytes": pz[-1].extra["output_bytes"],
                            "stages_s": stages if all(timings) else None}
    if conv:
        pairs = list(zip(conv, quant))
        s["llamacpp"] = {"wall_s": statistics.median(c.wall_s + q.wall_s for c, q in pairs),
                         "cpu_s": statistics.median(cpu(c) + cpu(q) for c, q in pairs),
                         "convert_wall_s": med(conv), "quantize_wall_s": med(quant),
                         "peak_rss_bytes": max(m.peak_rss_bytes for m in conv + quant),
                         "convert_peak_rss_bytes": max(m.peak_rss_bytes for m in conv),
                         "quantize_peak_rss_bytes": max(m.peak_rss_bytes for m in quant),
                         "max_process_rss_bytes": max(m.max_process_rss_bytes for m in conv + quant),
                         "peak_anon_bytes": max(m.peak_anon_bytes for m in conv + quant),
                         "peak_file_bytes": max(m.peak_file_bytes for m in conv + quant),
                         "f16_bytes": conv[-1].extra["output_bytes"], "output_bytes": quant[-1].extra["output_bytes"]}
    if pz and conv:
        p, l = s["personalize"], s["llamacpp"]
        s["ratio"] = {"wall": p["wall_s"] / l["wall_s"], "cpu": p["cpu_s"] / l["cpu_s"],
                      "peak_rss": p["peak_rss_bytes"] / l["peak_rss_bytes"], "speedup": l["wall_s"] / p["wall_s"]}
    loads = [m.extra["loadavg_1min_before"] for m in pz + conv + quant]
    s["loadavg_1min_before_runs"] = [min(loads), max(loads)]
    return s


def table(summaries: list[dict]) -> str:
    """Side-by-side text table; ratio = personalize / llama.cpp (below 1 is better for personalize)."""
    def sec(v):
        return "-" if v is None else f"{v:8.2f} s"

    def mem(v):
        return "-" if v is None else human_bytes(v)

    rows: list[tuple[str, str, str, str]] = []
    for s in summaries:
        p, l = s.get("personalize"), s.get("llamacpp")
        rows.append((f"[{s['model']}]", "personalize", "llama.cpp", "ratio p/l"))
        if p and l:
            r = s["ratio"]
            rows.append(("total wall", sec(p["wall_s"]), sec(l["wall_s"]), f"{r['wall']:.2f}x"))
            rows.append(("CPU time (user+sys)", sec(p["cpu_s"]), sec(l["cpu_s"]), f"{r['cpu']:.2f}x"))
            rows.append(("peak RSS (process tree)", mem(p["peak_rss_bytes"]), mem(l["peak_rss_bytes"]), f"{r['peak_rss']:.2f}x"))
        elif p:
            rows.append(("total wall", sec(p["wall_s"]), "skipped", ""))
            rows.append(("peak RSS", mem(p["peak_rss_bytes"]), "skipped", ""))
        elif l:
            rows.append(("total wall", "skipped", sec(l["wall_s"]), ""))
            rows.append(("peak RSS", "skipped", mem(l["peak_rss_bytes"]), ""))
        if p or l:
            rows.append(("  largest one process", mem(p and p["max_process_rss_bytes"]),
                         mem(l and l["max_process_rss_bytes"]), ""))
            rows.append(("  peak RssAnon (sampled)", mem(p and p["peak_anon_bytes"]), mem(l and l["peak_anon_bytes"]), ""))
            rows.append(("  peak RssFile, mmap (sampled)", mem(p and p["peak_file_bytes"]), mem(l and l["peak_file_bytes"]), ""))
        if l:
            rows.append(("llama.cpp convert f16", "", sec(l["convert_wall_s"]), ""))
            rows.append(("  peak RSS", "", mem(l["convert_peak_rss_bytes"]), ""))
            rows.append((f"llama-quantize {GGUF_TYPE}", "", sec(l["quantize_wall_s"]), ""))
            rows.append(("  peak RSS", "", mem(l["quantize_peak_rss_bytes"]), ""))
        if p:
            if p["stages_s"]:
                for k, v in p["stages_s"].items():
                    rows.append((f"personalize stage {k}", sec(v), "", ""))
            else:
                rows.append(("personalize stages", "no timings in personalize.json", "", ""))
        rows.append(("output size", mem(p and p["output_bytes"]), mem(l and l["output_bytes"]), ""))
        rows.append(("", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def acceptance(s: dict) -> dict | None:
    if "ratio" not in s:
        return None
    p, l = s["personalize"], s["llamacpp"]
    checks = {
        f"speedup >= {TARGET_SPEEDUP}x": (s["ratio"]["speedup"] >= TARGET_SPEEDUP, f"{s['ratio']['speedup']:.2f}x"),
        f"peak RSS <= {TARGET_RSS_FRACTION} x llama.cpp": (s["ratio"]["peak_rss"] <= TARGET_RSS_FRACTION,
                                                           f"{s['ratio']['peak_rss']:.2f}x"),
        f"peak RSS < {TARGET_RSS_BYTES / 1e9} GB": (p["peak_rss_bytes"] < TARGET_RSS_BYTES,
                                                    f"{p['peak_rss_bytes'] / 1e9:.2f} GB"),
    }
    return {k: {"met": ok, "value": v} for k, (ok, v) in checks.items()} | {"llamacpp_peak_rss_gb":
                                                                         l["peak_rss_bytes"] / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("smollm2", "1b", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per tool (median wall, max RSS reported)")
    ap.add_argument("--skip-llamacpp", action="store_true", help="measure personalize only")
    ap.add_argument("--skip-personalize", action="store_true", help="measure llama.cpp only")
    ap.add_argument("--llamacpp-pure", action="store_true",
                    help="llama-quantize --pure: Q4_0 for every tensor (default keeps the embedding/output at Q6_K)")
    ap.add_argument("--json-out", type=Path, help="write every measurement as JSON here")
    ap.add_argument("--smollm2", type=Path, default=DEFAULT_SMOLLM2, help="SmolLM2-135M-Instruct HF dir")
    ap.add_argument("--cache", type=Path, default=None,
                    help="build/model cache (default $PERSONALIZE_BENCH_CACHE or ~/.cache/personalize-bench)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where outputs go (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the converted outputs of the last run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel jobs for the llama.cpp build")
    args = ap.parse_args(argv)

    cache = args.cache or cache_dir()
    lc = None
    if not args.skip_llamacpp:
        try:
            lc = ensure_llamacpp(cache, jobs=args.jobs, say=say)
        except LlamaCppSetupError as exc:
            say(f"error: {exc}")
            return 2
        say(f"llama.cpp: {lc.src}  (build: {lc.build_info() or 'prebuilt, no build-info.json'})")

    models: list[tuple[str, Path]] = []
    if args.model in ("smollm2", "both"):
        models.append(("smollm2", args.smollm2))
    if args.model in ("1b", "both"):
        models.append(("1b", ensure_llama_1b(cache / "models" / "llama-3.2-1b-random", args.smollm2, log=say)))
    for name, d in models:
        if not (d / "config.json").is_file():
            say(f"error: {d}/config.json not found ({name}); pass --smollm2 DIR")
            return 2

    own_work = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="personalize-bench-")) if own_work else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine_info(), "personalize_revision": git_revision(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "page_cache": "warm: every input file is read once, untimed, before the timed runs; "
                                  "`sync` before each run; outputs go to the page cache (no fsync by either tool)",
                    "quantization": {"personalize": QUANTIZATION, "llamacpp": GGUF_TYPE}, "repeat": args.repeat, "llamacpp_pure": args.llamacpp_pure,
                    "llamacpp": lc.build_info() | {"src": str(lc.src)} if lc else None, "models": {}}
    summaries = []
    try:
        for name, model_dir in models:
            inputs = files_under(model_dir)
            n = warm_page_cache(inputs)
            say(f"[{name}] {model_dir}: warmed the page cache ({human_bytes(n)} in {len(inputs)} files, untimed)")
            pz, conv, quant = [], [], []
            for i in range(args.repeat):
                tag = f"{name}-{i}"
                last = i == args.repeat - 1
                if not args.skip_personalize:
                    m = run_personalize(model_dir, work, tag, keep=args.keep and last)
                    say(f"  {m.label}: {m.wall_s:.2f} s, peak RSS {human_bytes(m.peak_rss_bytes)}")
                    pz.append(m)
                if lc:
                    c, q = run_llamacpp(lc, model_dir, work, tag, keep=args.keep and last, pure=args.llamacpp_pure)
                    say(f"  {c.label}: {c.wall_s:.2f} s, peak RSS {human_bytes(c.peak_rss_bytes)}; "
                        f"{q.label}: {q.wall_s:.2f} s, peak RSS {human_bytes(q.peak_rss_bytes)}")
                    conv.append(c)
                    quant.append(q)
            s = summarize(name, pz, conv, quant)
            if name == "1b":
                s["acceptance"] = acceptance(s)
            summaries.append(s)
            report["models"][name] = {"input": {"path": str(model_dir), "bytes": n}, "summary": s,
                                      "runs": {"personalize": [m.to_json() for m in pz],
                                               "llamacpp_convert": [m.to_json() for m in conv],
                                               "llamacpp_quantize": [m.to_json() for m in quant]}}
    except CommandFailed as exc:
        say(f"error: {exc}")
        return 2
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"Conversion benchmark ({QUANTIZATION} vs llama.cpp f16 -> {GGUF_TYPE}); median of {args.repeat} run(s), "
          f"peak RSS = max over runs.")
    print("Page cache warm: inputs read once untimed before timing; `sync` before each run.")
    print(f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
          f"{human_bytes(report['machine']['ram_bytes'])} RAM; personalize at {report['personalize_revision']}\n")
    print(table(summaries))
    for s in summaries:
        lo, hi = s["loadavg_1min_before_runs"]
        print(f"[{s['model']}] 1-min load average before the runs: {lo:.1f} .. {hi:.1f} "
              f"(above {report['machine']['cores']} means other work shared the cores: trust CPU time over wall)")
    for s in summaries:
        if s.get("acceptance"):
            print(f"Acceptance [{s['model']}] (personalize add vs convert+quantize):")
            for k, v in s["acceptance"].items():
                if isinstance(v, dict):
                    print(f"  {'MET   ' if v['met'] else 'MISSED'} {k}: {v['value']}")
    print("\nCommands (last run):")
    for entry in report["models"].values():
        for runs in entry["runs"].values():
            if runs:
                print("  " + shell_line(runs[-1]["argv"], runs[-1]["extra"].get("env")))
    if args.keep:
        print(f"\noutputs kept in {work}")
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
