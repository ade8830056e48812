"""The local store: --force refusals, the end-of-write check, stale partial dirs, rm/verify on a name.

Fast, in-process; the killed-process and concurrent-process versions are in test_registry_faults.py
and test_registry_concurrency.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import store
from registry.store import Registry, RegistryError, staged_directory
from tests.conftest import run_cli
from tests.hub_stub import hash_tree, make_fake_artifact


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def stale_partial(parent: Path, name: str, *, pid: int | None = None, complete_copy: Path | None = None) -> Path:
    """What `kill -9` during an add leaves: `.NAME.partial-<host>-<pid>-<start>-<rand>` of a dead writer."""
    pid = dead_pid() if pid is None else pid
    path = parent / f".{name}.partial-{store._host_id()}-{pid}-{store._start_ticks(pid) or 1}-x1y2"
    if complete_copy is not None:
        import shutil

        shutil.copytree(complete_copy, path)
    else:
        path.mkdir(parents=True)
        (path / "params_shard_0.bin").write_bytes(b"\0" * 100)
        (path / "mlc-chat-config.json").write_text("{}")
    return path


# ----------------------------------------------------------------------------- --force
def test_force_refuses_the_source_and_any_non_artifact(home, tiny_llama, tmp_path):
    before = hash_tree(tiny_llama)
    code, _, err = run_cli("add", str(tiny_llama), "--output", str(tiny_llama), "--force", "--no-eval",
                           "-q", "q0f32", "--quiet")
    assert code == 2 and str(tiny_llama) in err and "not a personalize artifact" in err, err
    assert hash_tree(tiny_llama) == before  # the source survives

    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    (docs / "mlc-chat-config.json").write_text("{}")  # looks MLC-ish, but personalize did not write it
    code, _, err = run_cli("add", str(tiny_llama), "--output", str(docs), "--force", "--no-eval", "-q", "q0f32",
                           "--quiet")
    assert code == 2 and str(docs) in err and "not a personalize artifact" in err, err
    assert (docs / "thesis.txt").read_text() == "years of work"

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, _, err = run_cli("add", str(tiny_llama), "--output", str(a_file), "--force", "--no-eval", "-q", "q0f32",
                           "--quiet")
    assert code == 2 and "not a personalize artifact" in err and a_file.read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # nothing left behind


def test_force_replaces_an_artifact_and_only_then(tmp_path, home):
    art = make_fake_artifact(tmp_path / "out", name="out")
    with staged_directory(art, overwrite=True) as tmp:
        make_fake_artifact(tmp, name="out", seed=5)
    assert json.loads((art / "personalize.json").read_text())["name"] == "out"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial, no swap dir left
    with pytest.raises(RegistryError, match="already exists"):
        with staged_directory(art) as tmp:
            pass


def test_end_of_write_check_honours_overwrite(tmp_path, home):
    """Another run that finishes first wins; the replace at the end never silently takes its place."""
    dest = tmp_path / "x"
    with pytest.raises(RegistryError, match="already exists"):
        with staged_directory(dest) as tmp:
            (tmp / "mine").write_text("mine")
            make_fake_artifact(dest, name="theirs")  # the other run renamed into place meanwhile
    assert json.loads((dest / "personalize.json").read_text())["name"] == "theirs"
    assert not (dest / "mine").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_live_writer_of_the_same_name_is_refused_early(tmp_path, home):
    dest = tmp_path / "x"
    with staged_directory(dest) as tmp:
        with pytest.raises(RegistryError, match=f"being written by another personalize run \\(pid {os.getpid()}\\)"):
            with staged_directory(dest):
                pass
        assert tmp.is_dir()  # the first writer's work is untouched
        make_fake_artifact(tmp, name="x")
    assert store.is_artifact_dir(dest)


# ----------------------------------------------------------------------------- stale partials
def test_stale_partials_are_never_listed_or_resolved_and_the_next_write_cleans_them(home):
    reg = Registry()
    good = make_fake_artifact(reg.artifacts_dir / "good", name="good")
    dead = stale_partial(reg.artifacts_dir, "victim", complete_copy=good)  # even a complete-looking one
    live = stale_partial(reg.artifacts_dir, "busy", pid=os.getpid())
    assert reg.names() == ["good"]
    code, out, _ = run_cli("list", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["good"]
    with pytest.raises(RegistryError, match="unfinished write"):
        reg.resolve(dead)
    code, _, err = run_cli("verify", str(dead))
    assert code == 2 and "unfinished write" in err

    with staged_directory(reg.path("other")) as tmp:  # any write to the registry
        make_fake_artifact(tmp, name="other")
    assert not dead.exists()  # the dead writer's partial is gone
    assert live.exists()  # a live writer's is not touched
    assert reg.names() == ["good", "other"]


def test_partials_outside_the_registry_are_cleaned_only_for_their_own_destination(tmp_path, home):
    mine = stale_partial(tmp_path, "out")
    someone_elses = stale_partial(tmp_path, "unrelated")
    with staged_directory(tmp_path / "out") as tmp:
        make_fake_artifact(tmp, name="out")
    assert not mine.exists() and someone_elses.exists()


def test_rm_works_on_the_name_of_a_killed_add(home):
    reg = Registry()
    dead = stale_partial(reg.artifacts_dir, "victim")
    code, _, err = run_cli("rm", "victim")
    assert code == 0, err
    assert not dead.exists()
    code, _, err = run_cli("rm", "victim")
    assert code == 2 and "no artifact named 'victim'" in err
    stale_partial(reg.artifacts_dir, "busy", pid=os.getpid())
    code, _, err = run_cli("rm", "busy")
    assert code == 2 and f"being written by pid {os.getpid()}" in err


def test_a_replace_killed_between_its_two_renames_is_rolled_back(home):
    reg = Registry()
    art = make_fake_artifact(reg.artifacts_dir / "victim", name="victim")
    before = hash_tree(art)
    os.replace(art, reg.artifacts_dir / ".victim.old-123-abcd")  # what the dead writer had done
    stale_partial(reg.artifacts_dir, "victim")
    assert not art.exists()
    code, out, err = run_cli("verify", "victim", "--json")  # verify works on the name again
    assert code == 0 and json.loads(out)["ok"], err
    assert hash_tree(art) == before and reg.names() == ["victim"]
    assert [p.name for p in reg.artifacts_dir.iterdir() if p.name.startswith(".")] == [
        p.name for p in reg.artifacts_dir.iterdir() if ".partial-" in p.name]  # the swap dir is gone
    # `list` (names) recovers the same way.
    os.replace(art, reg.artifacts_dir / ".victim.old-456-efgh")
    assert reg.names() == ["victim"] and hash_tree(art) == before


# ----------------------------------------------------------------------------- push records
def test_rm_drops_the_push_record_under_the_lock(home):
    reg = Registry()
    make_fake_artifact(reg.artifacts_dir / "a", name="a")
    store.record_push(home, "a", {"repo_id": "alice/a", "revision": "main", "endpoint": "e", "commit": "c"})
    store.record_push(home, "b", {"repo_id": "alice/b", "revision": "main", "endpoint": "e", "commit": "c"})
    reg.remove("a")
    assert set(store.read_published(home)) == {"b"}
    assert (home / store.LOCK_FILE).exists()


def test_the_lock_is_exclusive_across_processes(home):
    """A second process blocks on the lock until the first lets go (fcntl.flock, not a thread lock)."""
    script = ("import sys, time; from registry.store import registry_lock\n"
              "with registry_lock(sys.argv[1]):\n    print('got', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1])] + sys.path)}
    with store.registry_lock(home):
        p = subprocess.Popen([sys.executable, "-c", script, str(home)], stdout=subprocess.PIPE, text=True, env=env)
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=3)
    out, _ = p.communicate(timeout=30)
    assert out.strip() == "got"
