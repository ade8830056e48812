"""Several processes on one registry at once: adds of one name, pushes and rm, push records.

Everything runs as real subprocesses (the CLI, or the store's functions in a tight loop), because the
registry lock is a file lock between processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import store
from tests.conftest import run_cli
from tests.hub_env import clean_hf_env, scrubbed_environ  # noqa: F401 - fixture
from tests.hub_stub import HubStub, make_fake_artifact

pytestmark = pytest.mark.usefixtures("clean_hf_env")
REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_concurrencyTOKEN"


def start(home: Path, args: list[str], extra_env: dict | None = None) -> subprocess.Popen:
    env = scrubbed_environ({"PERSONALIZE_HOME": str(home), **(extra_env or {}),
                            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])})
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outs)]


def test_adds_of_one_name_pushes_and_rm_at_once(home, tiny_llama):
    reg = store.Registry(home)
    for name in ("p0", "p1", "p2", "r0", "r1", "keep"):
        make_fake_artifact(reg.artifacts_dir / name, name=name, seed=len(name))
    for name in ("r0", "r1", "keep"):
        store.record_push(home, name, {"repo_id": f"alice/{name}", "revision": "main", "endpoint": "e",
                                       "commit": "c" * 40})
    with HubStub(tokens={TOKEN: "alice"}) as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
                   "HF_HOME": str(home.parent / "hf-home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        add = ["-m", "personalize", "add", str(tiny_llama), "--name", "x", "-q", "q0f32", "--no-eval", "--quiet"]
        adds = [start(home, add) for _ in range(3)]
        pushes = [start(home, ["-m", "personalize", "push", n, "--repo", f"alice/{n}"], hub_env) for n in ("p0", "p1", "p2")]
        rms = [start(home, ["-m", "personalize", "rm", n]) for n in ("r0", "r1")]
        add_results, push_results, rm_results = finish(adds), finish(pushes), finish(rms)
        for n in ("p0", "p1", "p2"):
            assert hub.files(f"alice/{n}")["personalize.json"]

    winners = [r for r in add_results if r[0] == 0]
    losers = [r for r in add_results if r[0] != 0]
    assert len(winners) == 1, add_results
    for code, _, err in losers:  # one clear line each, exit 2
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert "x already exists" in errors[0] or "being written by another personalize run" in errors[0], err
    assert all(r[0] == 0 for r in push_results + rm_results), push_results + rm_results

    # No lost record: three pushes recorded, two removed, one untouched.
    assert set(store.read_published(home)) == {"p0", "p1", "p2", "keep"}
    assert store.read_published(home)["p1"]["repo_id"] == "alice/p1"
    assert reg.names() == ["keep", "p0", "p1", "p2", "x"]
    assert not [p.name for p in reg.artifacts_dir.iterdir() if p.name.startswith(".")]
    code, out, err = run_cli("verify", "x", "--json")
    assert code == 0 and json.loads(out)["ok"], out + err


RECORDER = """
import sys
from registry.store import forget_push, record_push
home, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    if prefix == "forget":
        forget_push(home, f"old{i}")
    else:
        record_push(home, f"{prefix}{i}", {"repo_id": f"alice/{prefix}{i}", "revision": "main",
                                           "endpoint": "e", "commit": "c" * 40})
"""


def test_published_json_loses_no_record_under_contention(home):
    """Before the lock, 4 writers x 40 records and a remover lost records (an unlocked read-modify-write)."""
    n = 40
    for i in range(n):
        store.record_push(home, f"old{i}", {"repo_id": f"alice/old{i}", "revision": "main", "endpoint": "e",
                                            "commit": "c" * 40})
    procs = [start(home, ["-c", RECORDER, str(home), prefix, str(n)]) for prefix in ("a", "b", "c", "d", "forget")]
    for code, _, err in finish(procs):
        assert code == 0, err
    records = store.read_published(home)
    assert set(records) == {f"{p}{i}" for p in "abcd" for i in range(n)}
