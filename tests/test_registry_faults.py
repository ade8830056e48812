"""Fault injection: `personalize add` (the real CLI, a subprocess) is killed with SIGKILL at each stage.

PERSONALIZE_TEST_PAUSE_AT=<stage> makes the process stop at the first entry of that stage (read,
quantize, write: the streaming loop; rename: the finished staging dir just before it is moved into
place; swap: a --force replace between moving the old artifact aside and moving the new one in)
and say so on stderr; the test then kills it with SIGKILL, which no handler sees. After every kill
the registry must be consistent (nothing unfinished listed or resolvable, an artifact that existed
still verifies) and the next run must succeed and leave no partial dir behind.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run_cli
from tests.hub_stub import hash_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "victim"


def cli(home: Path, *args: str, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PERSONALIZE_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    env.pop("PERSONALIZE_TEST_PAUSE_AT", None)
    if pause_at:
        env["PERSONALIZE_TEST_PAUSE_AT"] = pause_at
    return subprocess.Popen([sys.executable, "-m", "personalize", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    p = cli(home, *args)
    out, err = p.communicate(timeout=600)
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())


def kill_at(home: Path, stage: str, *args: str) -> None:
    """Start `add`, wait until it reports the pause at `stage`, SIGKILL it."""
    p = cli(home, *args, pause_at=stage)
    sel = selectors.DefaultSelector()
    sel.register(p.stderr, selectors.EVENT_READ)
    seen, deadline = b"", time.monotonic() + 300
    while f"paused at {stage}".encode() not in seen:
        assert p.poll() is None, f"add exited ({p.returncode}) before reaching {stage}: {seen.decode()[-2000:]}"
        assert time.monotonic() < deadline, f"add never reached stage {stage}: {seen.decode()[-2000:]}"
        if sel.select(timeout=1):
            seen += os.read(p.stderr.fileno(), 65536)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL


def unfinished(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "artifacts").iterdir() if p.name.startswith("."))


def assert_consistent(home: Path, expect: list[str]) -> None:
    """`list` shows exactly the finished artifacts; each verifies; nothing unfinished is reachable by name.

    Through the CLI's own entry point in-process (the same commands, without paying the imports each time)."""
    assert os.environ["PERSONALIZE_HOME"] == str(home)
    code, out, err = run_cli("list", "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == expect
    for name in expect:
        code, out, err = run_cli("verify", name, "--json")
        assert code == 0 and json.loads(out)["ok"], out + err
    for entry in unfinished(home):
        code, _, err = run_cli("verify", str(home / "artifacts" / entry))
        assert code == 2 and "unfinished write" in err


def test_add_killed_at_every_stage_leaves_a_consistent_registry(home, tiny_llama):
    add = ("add", str(tiny_llama), "--name", NAME, "-q", "q0f32", "--no-eval", "--quiet")
    left_by_previous: list[str] = []
    for stage in ("read", "quantize", "write", "rename"):
        kill_at(home, stage, *add)
        now = unfinished(home)
        assert len(now) == 1 and now[0].startswith(f".{NAME}.partial-"), now  # the previous kill's was cleaned
        assert not set(left_by_previous) & set(now)
        left_by_previous = now
        assert_consistent(home, [])

    done = run(home, *add)
    assert done.returncode == 0, done.stderr
    assert unfinished(home) == []  # the next run cleaned the last kill's partial
    assert_consistent(home, [NAME])
    before = hash_tree(home / "artifacts" / NAME)

    # A --force replace killed before its rename, and between its two renames: the old artifact stays
    # (or is put back by the next command that looks for the name) and verifies; then a rerun replaces it.
    kill_at(home, "rename", *add, "--force")
    assert_consistent(home, [NAME])
    assert hash_tree(home / "artifacts" / NAME) == before
    kill_at(home, "swap", *add, "--force")
    assert not (home / "artifacts" / NAME).exists()  # killed with the old artifact moved aside
    assert_consistent(home, [NAME])  # the next look at the registry put it back
    assert hash_tree(home / "artifacts" / NAME) == before
    done = run(home, *add, "--force")
    assert done.returncode == 0, done.stderr
    assert unfinished(home) == []
    assert_consistent(home, [NAME])
