#!/usr/bin/env python
"""Many variants: `personalize batch` (process pool, Ray) against a plain loop of `personalize add`.

16 LoRA adapters of SmolLM2-135M-Instruct (ranks 2/4/8/16 x four sets of target modules, made here
with peft, `init_lora_weights=False` so B is random and every merge changes the weights) go through
  loop   `personalize add BASE` once, then `personalize add ADAPTER --base BASE-q4f16_1` 16 times
         (subprocesses, one after the other: what a user's shell loop does; the base is in the
         registry first, so the loop gets the same untouched-tensor reuse as batch)
  jobs   `personalize batch manifest.yaml --jobs N`
  ray    `personalize batch manifest.yaml --ray --jobs N` (a local Ray cluster started by the command)
each into a fresh $PERSONALIZE_HOME, timed end to end with peak RSS of the whole process tree
(bench/_measure.py). Ratios are against the loop. With --eval the gate runs for every variant (the
library is compiled once, untimed, before the first mode, and shared).

    python bench/batch.py --adapters 16 --jobs 2 --json-out bench-batch.json          # gate off
    python bench/batch.py --adapters 16 --jobs 2 --eval --json-out bench-batch-eval.json

The machine's 1-minute load average is recorded before and after each run: on a shared machine it
explains more of the wall time than the code does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import human_bytes, machine_info, run_measured, warm_page_cache, files_under  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SMOLLM2 = Path(os.environ.get("PERSONALIZE_SMOLLM2", "/root/.cache/personalize-models/SmolLM2-135M-Instruct"))
RANKS = (2, 4, 8, 16)
TARGETS = (("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"),
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
TARGET_SPEEDUP = 1.6  # issue 13: batch --jobs 2 against the loop


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_adapters(base: Path, out: Path, count: int) -> list[Path]:
    """`count` LoRA adapters with different ranks and targets; random B (no training needed)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = out / f"lora-{i:02d}"
        paths.append(path)
        if (path / "adapter_config.json").is_file():
            continue
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        rank, targets = RANKS[i % len(RANKS)], TARGETS[(i // len(RANKS)) % len(TARGETS)]
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, config)
            with torch.no_grad():  # peft's non-default init is large; keep the variants close to the base
                for name, p in peft_model.named_parameters():
                    if "lora_B" in name:
                        p.mul_(0.01)
            peft_model.save_pretrained(path)
        (path / "adapter_config.json").write_text(json.dumps(
            {**json.loads((path / "adapter_config.json").read_text()), "base_model_name_or_path": str(base)}, indent=2))
    return paths


def fresh_home(work: Path, label: str, libs: Path) -> Path:
    home = work / f"home-{label}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "libs").symlink_to(libs)  # compiled libraries are shared (compiled once, untimed)
    return home


def personalize(*args: str) -> list[str]:
    return [sys.executable, "-m", "personalize", *args]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", type=Path, default=DEFAULT_SMOLLM2)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--eval", action="store_true", help="run the equivalence gate for every variant")
    ap.add_argument("--modes", default="loop,jobs,ray", help="comma list of loop, jobs, ray")
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir (removed)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--libs", type=Path, default=None, help="compiled-library cache to share (e.g. "
                    "$PERSONALIZE_TEST_LIBS); with it the untimed warm-up compile is skipped")
    args = ap.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    base = args.smollm2.resolve()
    say(f"making {args.adapters} adapters of {base.name} ...")
    adapters = make_adapters(base, work / "adapters", args.adapters)
    manifest = work / "manifest.yaml"
    manifest.write_text(f"base: {base}\nquantization: q4f16_1\neval: {'true' if args.eval else 'false'}\n"
                        f"variants:\n  - source: {work / 'adapters'}/lora-*\n")
    libs = args.libs.resolve() if args.libs else work / "libs"
    libs.mkdir(parents=True, exist_ok=True)
    env = {"OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    if args.eval and not args.libs:  # compile the library once, untimed: the comparison is about the variants
        home = fresh_home(work, "warm", libs)
        run_measured("warm", personalize("add", str(base), "--quiet"), env={**env, "PERSONALIZE_HOME": str(home)},
                     log_path=work / "warm.log")
    warm_page_cache(files_under(base) + [f for a in adapters for f in files_under(a)])
    no_eval = [] if args.eval else ["--no-eval"]
    results = {}
    for mode in args.modes.split(","):
        home = fresh_home(work, mode, libs)
        menv = {**env, "PERSONALIZE_HOME": str(home)}
        say(f"[{mode}] load {os.getloadavg()[0]:.1f} ...")
        t0 = time.perf_counter()
        if mode == "loop":
            steps = [run_measured("loop-base", personalize("add", str(base), "--quiet", "--no-eval"), env=menv,
                                  log_path=work / "loop-base.log")]
            for a in adapters:
                steps.append(run_measured(f"loop-{a.name}", personalize("add", str(a), "--base", "SmolLM2-135M-Instruct"
                                                                         "-q4f16_1", "--quiet", *no_eval),
                                          env=menv, log_path=work / f"loop-{a.name}.log"))
            wall = time.perf_counter() - t0
            results[mode] = {"wall_s": wall, "peak_rss_bytes": max(s.peak_rss_bytes for s in steps),
                             "user_s": sum(s.user_s for s in steps), "sys_s": sum(s.sys_s for s in steps),
                             "command": "personalize add BASE; for a in adapters: personalize add $a --base BASE-q4f16_1",
                             "loadavg_before": steps[0].extra["loadavg_1min_before"]}
        else:
            extra = ["--ray"] if mode == "ray" else []
            m = run_measured(mode, personalize("batch", str(manifest), "--jobs", str(args.jobs), "--quiet",
                                               "--out", str(work / f"apps-{mode}"), *extra),
                             env=menv, log_path=work / f"{mode}.log")
            results[mode] = {"wall_s": m.wall_s, "peak_rss_bytes": m.peak_rss_bytes, "user_s": m.user_s,
                             "sys_s": m.sys_s, "command": " ".join(m.argv[1:]).replace(sys.executable, "python"),
                             "loadavg_before": m.extra["loadavg_1min_before"]}
        results[mode]["loadavg_after"] = os.getloadavg()[0]
        delivered = len([p for p in (home / "artifacts").iterdir() if p.name.startswith("lora-")])
        results[mode]["variants_delivered"] = delivered
        say(f"[{mode}] {results[mode]['wall_s']:.1f} s, peak RSS {human_bytes(results[mode]['peak_rss_bytes'])}, "
            f"{delivered} variants, load {results[mode]['loadavg_before']:.1f} -> {results[mode]['loadavg_after']:.1f}")
    loop = results.get("loop")
    print(f"\n{args.adapters} LoRA adapters of {base.name}, q4f16_1, gate {'on' if args.eval else 'off'}, "
          f"--jobs {args.jobs}")
    print(f"{'mode':6} {'wall s':>8} {'x loop':>7} {'peak RSS':>11} {'CPU s':>7} {'load':>11}")
    for mode, r in results.items():
        ratio = loop["wall_s"] / r["wall_s"] if loop else float("nan")
        r["speedup_vs_loop"] = ratio
        print(f"{mode:6} {r['wall_s']:8.1f} {ratio:7.2f} {human_bytes(r['peak_rss_bytes']):>11} "
              f"{r['user_s'] + r['sys_s']:7.1f} {r['loadavg_before']:5.1f}->{r['loadavg_after']:<5.1f}")
    if loop and "jobs" in results:
        ok = results["jobs"]["speedup_vs_loop"] >= TARGET_SPEEDUP
        print(f"target: batch --jobs {args.jobs} >= {TARGET_SPEEDUP}x the loop: {'met' if ok else 'NOT met'}")
    if "jobs" in results and "ray" in results:
        print(f"ray / process pool wall: {results['ray']['wall_s'] / results['jobs']['wall_s']:.2f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": machine_info(), "adapters": args.adapters, "jobs": args.jobs,
                                             "eval": args.eval, "results": results}, indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
