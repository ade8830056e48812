"""`personalize batch MANIFEST` through the real CLI (a subprocess, as a user runs it) and, for Ray, the
Python API on a local cluster started in-process. Adapters are made by peft on a tiny base; pushes go
to the local Hub stand-in.

Exit codes checked here: 0 all delivered, 1 some variant failed (the others land).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from artifacts.tensor_cache import iter_tensors
from artifacts.verify import verify_artifact
from tests.adapter_fixtures import make_tiny_adapter, make_tiny_base
from tests.hub_env import clean_hf_env, scrubbed_environ  # noqa: F401 - fixture
from tests.hub_stub import HubStub
from tests.tiny_models import add_chatml_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_stubTOKENbatch123SECRET"
pytestmark = pytest.mark.usefixtures("clean_hf_env")

# Different ranks and target modules, as real per-customer adapters differ.
ADAPTERS = {
    "alice": dict(target_modules=["q_proj", "v_proj"], r=2, lora_alpha=4),
    "bob": dict(target_modules=["o_proj", "down_proj"], r=4, lora_alpha=8),
    "carol": dict(target_modules=["gate_proj", "up_proj"], r=8, lora_alpha=8),
    "dave": dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], r=3, lora_alpha=6),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny base (its q0f32 library is the one tests/test_adapter_cli.py compiles) and four adapters."""
    root = tmp_path_factory.mktemp("batch")
    base = make_tiny_base(root / "base", arch="llama", tie=False, vocab=320)
    add_chatml_tokenizer(base)
    for i, (name, kw) in enumerate(ADAPTERS.items()):
        make_tiny_adapter(base, root / "adapters" / name, seed=10 + i, **kw)
    return root


@pytest.fixture
def hub():
    with HubStub(tokens={TOKEN: "alice"}) as stub:
        yield stub


def cli_env(home: Path, hub: HubStub | None, tmp_path: Path, **extra) -> dict:
    env = {"PERSONALIZE_HOME": str(home), "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if hub is not None:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
    env.update(extra)
    return scrubbed_environ(env)


def batch_cli(manifest: Path, *args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "personalize", "batch", str(manifest), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def write_manifest(root: Path, text: str, name: str = "variants.yaml") -> Path:
    path = root / name
    path.write_text(text)
    return path


def log_records(home: Path) -> list[dict]:
    path = home / "batch-log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def mtimes(home: Path) -> dict[str, int]:
    arts = home / "artifacts"
    return {p.name: (p / "personalize.json").stat().st_mtime_ns for p in arts.iterdir()
            if (p / "personalize.json").is_file()} if arts.is_dir() else {}


def test_manifest_converts_gates_and_pushes_every_variant(home, tmp_path, workdir, hub):
    """Four adapters through a glob, one from the Hub (hf://) and one gated q0f32 variant: all land,
    verified, pushed, listed."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("alice/erin-lora")
    api.upload_folder(repo_id="alice/erin-lora", folder_path=str(workdir / "adapters" / "dave"))
    manifest = write_manifest(tmp_path, f"""
base: {workdir / 'base'}
quantization: q4f16_1
eval: false
push: "alice/{{name}}-MLC"
variants:
  - source: {workdir / 'adapters'}/*
  - source: hf://alice/erin-lora
  - source: {workdir / 'adapters' / 'alice'}
    name: alice-exact
    quantization: q0f32
    eval: true
""")
    p = batch_cli(manifest, "--jobs", "2", "--json", "--out", str(tmp_path / "apps"), env=cli_env(home, hub, tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)  # --json: one document on stdout, nothing else
    rows = {v["name"]: v for v in doc["variants"]}
    assert sorted(rows) == sorted([f"{n}-q4f16_1" for n in ADAPTERS] + ["erin-lora-q4f16_1", "alice-exact"])
    assert all(v["status"] == "delivered" and v["push"]["status"] == "pushed" for v in rows.values()), rows
    # the gate ran on the gated variant only, through the compiled library, and passed q0f32's limits
    assert rows["alice-exact"]["gate"]["top1_agreement"] >= 0.97 and rows["alice-exact"]["gate"]["mean_kl"] < 2e-3
    assert all(v["gate"] is None for n, v in rows.items() if n != "alice-exact")
    # the base was converted once per quantization; every adapter variant copied untouched tensors from it
    base_arts = doc["base"]["artifacts"]
    assert set(base_arts) == {"q4f16_1", "q0f32"} and all(a["added"] for a in base_arts.values())
    delivered = [r for r in log_records(home) if r["event"] == "delivered"]
    assert len(delivered) == 6 and all(r["reused_params"] > 0 for r in delivered)
    # the Hub copy of dave converts to the same tensors as the local one, and records where it came from
    hub_lineage = json.loads((Path(rows["erin-lora-q4f16_1"]["path"]) / "personalize.json").read_text())
    assert hub_lineage["source"]["hub"] == "alice/erin-lora"
    a, b = (dict(iter_tensors(Path(rows[n]["path"]))) for n in ("erin-lora-q4f16_1", "dave-q4f16_1"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    published = json.loads((home / "published.json").read_text())
    for name, v in rows.items():
        art = Path(v["path"])
        assert verify_artifact(art) == []
        repo = f"alice/{name}-MLC"
        assert published[name]["repo_id"] == repo
        remote = hub.files(repo)
        for shard in art.glob("params_shard_*.bin"):  # the Hub holds exactly the verified bytes
            assert hashlib.sha256(hub.file_bytes(repo, shard.name)).hexdigest() == \
                hashlib.sha256(shard.read_bytes()).hexdigest()
        assert "tensor-cache.json" in remote
    # one appConfig and one package config listing every variant, on the shared library per quantization
    app = json.loads((tmp_path / "apps" / "app-config.json").read_text())
    pkg = json.loads((tmp_path / "apps" / "mlc-package-config.json").read_text())
    # tiny shapes fit none of MLC's prebuilt WebGPU libraries: no WebLLM record names a made-up library
    assert app["model_list"] == []
    assert {m["model"] for m in pkg["model_list"]} == {f"HF://alice/{n}-MLC" for n in rows}
    libs = {m["model_lib"] for m in pkg["model_list"] if "q4f16_1" in m["model_lib"]}
    assert len(libs) == 1 and len(pkg["model_list"]) == 6


def test_batch_output_equals_plain_add(home, tmp_path, workdir):
    """batch runs the one add pipeline: its tensors are byte-identical to `personalize add`'s."""
    manifest = write_manifest(tmp_path, f"base: {workdir / 'base'}\neval: false\nvariants:\n"
                                        f"  - source: {workdir / 'adapters' / 'bob'}\n")
    p = batch_cli(manifest, "--jobs", "1", "--quiet", env=cli_env(home, None, tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "plain"
    add = subprocess.run([sys.executable, "-m", "personalize", "add", str(workdir / "adapters" / "bob"), "--base",
                          str(workdir / "base"), "--output", str(out), "--no-eval", "--quiet"],
                         env=cli_env(tmp_path / "other-home", None, tmp_path), capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=600)
    assert add.returncode == 0, add.stderr[-2000:]
    ours = dict(iter_tensors(home / "artifacts" / "bob-q4f16_1"))
    theirs = dict(iter_tensors(out))
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_killed_batch_resumes_without_redoing(home, tmp_path, workdir):
    """SIGKILL the batch (and its workers) after two variants are logged; the re-run skips the logged ones,
    adopts what a worker finished unlogged, converts the rest, and touches no finished artifact."""
    manifest = write_manifest(tmp_path, f"base: {workdir / 'base'}\neval: false\nvariants:\n"
                                        f"  - source: {workdir / 'adapters'}/*\n")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "personalize", "batch", str(manifest), "--jobs", "1",
                                 "--quiet"], env=cli_env(home, None, tmp_path, PERSONALIZE_TEST_PAUSE_AT=
                                                         "batch-delivered-2"),
                                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO_ROOT)
    try:
        deadline = time.time() + 600
        while "paused at batch-delivered-2" not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.time() < deadline, "the batch never logged two variants"
            time.sleep(0.5)
        time.sleep(1.0)  # let the worker run on into the next variant, unlogged
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        for child in family:
            child.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        psutil.wait_procs(family, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = log_records(home)
    logged = {r["name"] for r in first if r["event"] == "delivered"}
    assert len(logged) == 2
    before = mtimes(home)
    assert logged <= set(before)

    p = batch_cli(manifest, "--jobs", "2", "--json", env=cli_env(home, None, tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {v["name"]: v for v in json.loads(p.stdout)["variants"]}
    assert all(v["status"] in ("delivered", "skipped") for v in rows.values()), rows
    assert {n for n, v in rows.items() if v["status"] == "skipped"} == logged
    second = log_records(home)[len(first):]
    started = {r["name"]: r["mode"] for r in second if r["event"] == "started"}
    assert not logged & set(started)  # nothing done was started again
    after = mtimes(home)
    for name, mtime in before.items():  # nothing finished was rewritten (adopted, not redone)
        assert after[name] == mtime, name
        if name not in logged and name in started:
            assert started[name] == "adopt"
    assert set(rows) <= set(after)
    assert all(verify_artifact(home / "artifacts" / n) == [] for n in rows)
    assert not [p for p in (home / "artifacts").iterdir() if p.name.startswith(".")]  # no partial dirs left
    # a third run does nothing at all
    p = batch_cli(manifest, "--json", env=cli_env(home, None, tmp_path))
    assert p.returncode == 0 and json.loads(p.stdout)["counts"]["skipped"] == len(ADAPTERS)
    assert [r for r in log_records(home)[len(first) + len(second):] if r["event"] == "started"] == []


def test_broken_adapter_is_reported_and_skipped(home, tmp_path, workdir):
    broken = tmp_path / "broken"
    shutil.copytree(workdir / "adapters" / "carol", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    manifest = write_manifest(tmp_path, f"base: {workdir / 'base'}\neval: false\nvariants:\n"
                                        f"  - source: {workdir / 'adapters' / 'alice'}\n"
                                        f"  - source: {broken}\n"
                                        f"  - source: {workdir / 'adapters' / 'bob'}\n", name="broken.yaml")
    p = batch_cli(manifest, "--jobs", "2", "--json", env=cli_env(home, None, tmp_path))
    assert p.returncode == 1, p.stderr[-3000:]
    rows = {v["name"]: v for v in json.loads(p.stdout)["variants"]}
    assert rows["broken-q4f16_1"]["status"] == "failed" and rows["broken-q4f16_1"]["stage"] == "convert"
    assert "adapter_model.safetensors" in rows["broken-q4f16_1"]["error"]
    assert rows["alice-q4f16_1"]["status"] == rows["bob-q4f16_1"]["status"] == "delivered"
    assert not (home / "artifacts" / "broken-q4f16_1").exists()
    # the table names it too
    p = batch_cli(manifest, "--jobs", "2", env=cli_env(home, None, tmp_path))
    assert p.returncode == 1 and "broken-q4f16_1" in p.stderr and "adapter_model.safetensors" in p.stderr
    retried = [r["name"] for r in log_records(home) if r["event"] == "started"]
    assert retried.count("broken-q4f16_1") == 2 and retried.count("alice-q4f16_1") == 1  # only the failure retried


def test_manifest_errors_name_the_problem(tmp_path, workdir):
    from personalize.batch import ManifestError, read_manifest

    cases = {
        "variants: []\nbase: x\n": "'variants' must be a non-empty list",
        f"base: x\nvariants: [{{source: {tmp_path}/none-*}}]\n": "matches no directory",
        f"base: x\nqunatization: q4\nvariants: [{workdir / 'adapters' / 'bob'}]\n": "unknown key 'qunatization'",
        f"base: x\nquantization: q5f16\nvariants: [{workdir / 'adapters' / 'bob'}]\n": "q5f16",
        f"base: x\npush: noslash\nvariants: [{workdir / 'adapters' / 'bob'}]\n": "'push' must be ORG/NAME",
        f"base: x\nvariants:\n  - {{source: {workdir / 'adapters'}/*, name: one}}\n": "'name' cannot be given for a glob",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"m{i}.yaml"
        path.write_text(text)
        with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("*", r"\*")):
            read_manifest(path)
    # the minimal form, as JSON, with a list of quantizations and a pattern name
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"base": "my-base", "quantization": ["q4f16_1", "q0f16"],
                                "variants": [{"source": str(workdir / "adapters" / "bob"), "name": "bob"}]}))
    m = read_manifest(path)
    assert [(v.name, v.quantization) for v in m.variants] == [("bob-q4f16_1", "q4f16_1"), ("bob-q0f16", "q0f16")]


def test_worker_count_fits_in_memory():
    from personalize.batch.executors import MiB, estimate_worker_bytes, memory_capped_jobs

    per = estimate_worker_bytes(270 * MiB, evaluate=False)  # SmolLM2-135M bf16
    assert 400 * MiB < per < 600 * MiB  # bench/batch.py measured ~450 MiB per add worker
    assert memory_capped_jobs(8, per, available=4 * per)[0] == 3  # 80% of RAM: 3 fit, not 4 or 8
    assert memory_capped_jobs(2, per, available=100 * per)[0] == 2
    assert memory_capped_jobs(4, per, available=per // 2)[0] == 1


def test_ray_local_cluster(home, tmp_path, workdir, hub, monkeypatch):
    """The same jobs on a Ray cluster started in-process on 127.0.0.1: converted, verified, pushed; then,
    on the same cluster, a job that returns its artifact as files (the no-shared-disk path)."""
    ray = pytest.importorskip("ray")
    from personalize.batch import run_batch

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    manifest = write_manifest(tmp_path, f"base: {workdir / 'base'}\neval: false\npush: alice/{{name}}\n"
                                        f"variants:\n  - source: {workdir / 'adapters'}/*\n")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        report = run_batch(manifest, jobs=2, ray=True, out_dir=tmp_path / "apps")
        moved = write_manifest(tmp_path, f"base: {workdir / 'base'}\neval: false\nvariants:\n"
                                         f"  - {{source: {workdir / 'adapters' / 'bob'}, name: bob-moved}}\n",
                               name="moved.yaml")
        moved_report = run_batch(moved, jobs=1, ray=True, transfer=True, out_dir=tmp_path / "apps2")
    finally:
        ray.shutdown()
    assert report.executor.startswith("Ray")
    assert [o.status for o in report.outcomes] == ["delivered"] * len(ADAPTERS), [o.error for o in report.outcomes]
    delivered = [r for r in log_records(home) if r["event"] == "delivered"]
    assert str(os.getpid()) not in {r["worker"].split(":")[1] for r in delivered}  # Ray's workers converted them
    for o in report.outcomes:
        assert verify_artifact(Path(o.path)) == [] and o.push["status"] == "pushed"
        assert "personalize.json" in hub.files(f"alice/{o.name}")
    assert all(r["reused_params"] > 0 for r in delivered if r["name"] != "bob-moved")
    # transfer: the worker converted privately and sent the files; the parent's copy verifies and equals
    # the shared-disk conversion of the same adapter tensor for tensor
    (o,) = moved_report.outcomes
    assert o.status == "delivered" and o.path == str(home / "artifacts" / "bob-moved"), o.error
    assert verify_artifact(Path(o.path)) == []
    a, b = dict(iter_tensors(Path(o.path))), dict(iter_tensors(home / "artifacts" / "bob-q4f16_1"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
