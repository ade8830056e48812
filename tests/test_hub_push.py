"""`personalize push` against a local stand-in for the Hub (tests/hub_stub.py), through the real CLI.

The CLI runs in a subprocess with HF_ENDPOINT pointing at the stub, because huggingface_hub reads
HF_ENDPOINT (and HF_HUB_DISABLE_XET) once, at import time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_env import clean_hf_env, scrubbed_environ  # noqa: F401 - fixture
from tests.hub_stub import HubStub, hash_tree, make_fake_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_stubTOKENabc123SECRETxyz"
SHARDS = ["params_shard_0.bin", "params_shard_1.bin", "params_shard_2.bin", "params_shard_3.bin"]
pytestmark = pytest.mark.usefixtures("clean_hf_env")


@pytest.fixture
def hub():
    with HubStub(tokens={TOKEN: "alice"}, orgs={"alice": ["acme"]}) as stub:
        yield stub


@pytest.fixture
def artifact(home) -> Path:
    return make_fake_artifact(home / "artifacts" / "tiny", name="tiny")


@pytest.fixture
def cli(hub, home, tmp_path):
    hf_home = tmp_path / "hf-home"

    def run(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
        env = scrubbed_environ(dict(PERSONALIZE_HOME=str(home), HF_HOME=str(hf_home), HF_ENDPOINT=hub.url,
                                    HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                                    HF_HUB_DISABLE_PROGRESS_BARS="1"))
        if token is not None:
            env["HF_TOKEN"] = token
        return subprocess.run([sys.executable, "-c", "from personalize.cli import main; main()", *args],
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)

    run.hf_home = hf_home
    return run


def error_line(p: subprocess.CompletedProcess) -> str:
    """The CLI's one error line (progress lines may precede it on stderr); no traceback."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in p.stderr, p.stderr
    return errors[0]


def lineage_of(path: Path) -> dict:
    return json.loads((path / "personalize.json").read_text())


def assert_repo_matches(hub: HubStub, repo_id: str, artifact: Path, revision: str = "main") -> None:
    import hashlib

    remote = hub.files(repo_id, revision)
    pushed = json.loads(hub.file_bytes(repo_id, "personalize.json", revision))
    for rel, rec in pushed["files"].items():
        data = hub.file_bytes(repo_id, rel, revision)
        assert len(data) == rec["size"] == remote[rel].size, rel
        assert hashlib.sha256(data).hexdigest() == rec["sha256"], rel
    local = lineage_of(artifact)["files"]
    for rel in local:  # every artifact file is there; all but a re-rendered card are byte-identical
        if rel != "README.md":
            assert hub.file_bytes(repo_id, rel, revision) == (artifact / rel).read_bytes(), rel


def test_push_uploads_everything_in_one_commit_and_download_matches(hub, cli, artifact, home, tmp_path):
    before = hash_tree(artifact)
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["repo_id"] == "alice/tiny-MLC" and doc["commit"]
    assert sorted(doc["uploaded"]) == sorted([*lineage_of(artifact)["files"], "personalize.json"])
    assert hub.count("commit") == 1
    assert hub.count("lfs_upload") == len(SHARDS)  # shards go through LFS, stored by sha256
    assert all(hub.files("alice/tiny-MLC")[s].lfs_sha256 for s in SHARDS)
    assert_repo_matches(hub, "alice/tiny-MLC", artifact)
    assert hash_tree(artifact) == before  # pushing never touches the artifact

    # Pull it back with huggingface_hub itself and check every byte against personalize.json.
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download("alice/tiny-MLC", endpoint=hub.url, cache_dir=tmp_path / "dl", token=TOKEN))
    lineage = lineage_of(local)
    got = hash_tree(local)
    for rel, rec in lineage["files"].items():
        assert got[rel] == rec["sha256"] and (local / rel).stat().st_size == rec["size"]


def test_downloaded_copy_passes_personalize_verify(hub, cli, artifact, tmp_path):
    from artifacts.verify import verify_artifact
    from huggingface_hub import snapshot_download

    assert cli("push", "tiny", "--repo", "alice/tiny-MLC").returncode == 0
    full = Path(snapshot_download("alice/tiny-MLC", endpoint=hub.url, cache_dir=tmp_path / "dl", token=TOKEN))
    # Every Hub repo has a .gitattributes; it is the Hub's, not the artifact's, so it is not held against it.
    problems = [p for p in verify_artifact(full) if p.path != ".gitattributes"]
    assert problems == []
    # And the CLI on a copy without it (what `personalize verify` sees for an mlc_llm download).
    local = snapshot_download("alice/tiny-MLC", endpoint=hub.url, cache_dir=tmp_path / "dl2", token=TOKEN,
                              ignore_patterns=[".gitattributes"])
    p = cli("verify", local, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["ok"] is True


def test_second_push_uploads_nothing_and_the_token_is_never_printed_or_written(hub, cli, artifact, home):
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC")
    assert p.returncode == 0, p.stderr
    head = hub.repos["alice/tiny-MLC"].branches["main"]
    hub.reset_counts()
    q = cli("push", "tiny", "--repo", "alice/tiny-MLC", "--json")
    assert q.returncode == 0, q.stderr
    doc = json.loads(q.stdout)
    assert doc["commit"] is None and doc["uploaded"] == [] and doc["head"] == head
    # huggingface_hub's create_commit asked the Hub what it has (preupload) and dropped every file.
    assert hub.count("preupload") == 1
    for route in ("lfs_upload", "commit"):
        assert hub.count(route) == 0, route
    assert hub.count("whoami") == 1  # the token was really sent...
    assert hub.repos["alice/tiny-MLC"].branches["main"] == head
    for text in (p.stdout, p.stderr, q.stdout, q.stderr):  # ...but never shown
        assert TOKEN not in text
    for root in (home, artifact, cli.hf_home):  # ...nor stored
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_changed_files_only_and_stale_shards_deleted(hub, cli, artifact, home):
    assert cli("push", "tiny", "--repo", "alice/tiny-MLC").returncode == 0
    # Same weights re-packed into fewer, larger shards: shards 0.. change, 2 and 3 become stale.
    import shutil

    shutil.rmtree(artifact)
    make_fake_artifact(artifact, name="tiny", shard_cap_bytes=1 << 20)
    assert not (artifact / "params_shard_1.bin").exists()
    hub.reset_counts()
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc["deleted"]) == {"params_shard_1.bin", "params_shard_2.bin", "params_shard_3.bin"}
    assert "tokenizer.json" in doc["unchanged"] and "params_shard_0.bin" in doc["uploaded"]
    assert hub.count("lfs_upload") == 1 and hub.count("commit") == 1
    assert not any(p.startswith("params_shard_") and p != "params_shard_0.bin" for p in hub.files("alice/tiny-MLC"))
    assert_repo_matches(hub, "alice/tiny-MLC", artifact)


def test_failed_commit_completes_on_rerun_without_resending(hub, cli, artifact):
    hub.fail_next("commit", 500)
    assert "500" in error_line(cli("push", "tiny", "--repo", "alice/tiny-MLC"))
    assert set(hub.files("alice/tiny-MLC")) == {".gitattributes"}  # nothing committed...
    assert hub.count("lfs_upload") == len(SHARDS)  # ...but the shards reached LFS storage
    hub.reset_counts()
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC")
    assert p.returncode == 0, p.stderr
    assert hub.count("lfs_upload") == 0 and hub.count("commit") == 1
    assert_repo_matches(hub, "alice/tiny-MLC", artifact)


def test_failed_upload_resends_only_missing_objects(hub, cli, artifact):
    hub.fail_next("lfs_upload", 403, skip=1)  # 403 like an expired S3 URL: not retried by the client
    error_line(cli("push", "tiny", "--repo", "alice/tiny-MLC"))
    shard_shas = {lineage_of(artifact)["files"][s]["sha256"] for s in SHARDS}
    stored = shard_shas & set(hub.lfs_objects)
    assert 1 <= len(stored) < len(SHARDS)
    hub.reset_counts()
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC")
    assert p.returncode == 0, p.stderr
    assert hub.count("lfs_upload") == len(SHARDS) - len(stored)
    assert_repo_matches(hub, "alice/tiny-MLC", artifact)


@pytest.mark.parametrize("token,expect", [("hf_wrong_token_value", "rejected the token"),
                                          (None, "no Hugging Face token")])
def test_bad_or_missing_token_is_one_clear_line(hub, cli, artifact, token, expect):
    p = cli("push", "tiny", "--repo", "alice/tiny-MLC", token=token)
    line = error_line(p)
    assert len(p.stderr.strip().splitlines()) == 1
    assert expect in line and "HF_TOKEN" in line
    if token:
        assert token not in p.stderr + p.stdout
    assert "alice/tiny-MLC" not in hub.repos


def test_no_write_access_to_namespace(hub, cli, artifact):
    assert "403" in error_line(cli("push", "tiny", "--repo", "bob/tiny-MLC"))


def test_private_repo_and_branch(hub, cli, artifact):
    p = cli("push", "tiny", "--repo", "acme/tiny-MLC", "--private", "--revision", "dev", "--message", "first")
    assert p.returncode == 0, p.stderr
    repo = hub.repos["acme/tiny-MLC"]
    assert repo.private is True and set(repo.branches) == {"main", "dev"}
    assert set(hub.files("acme/tiny-MLC", "main")) == {".gitattributes"}
    assert_repo_matches(hub, "acme/tiny-MLC", artifact, revision="dev")
    import httpx2

    anonymous = httpx2.get(f"{hub.url}/api/models/acme/tiny-MLC/tree/dev")
    assert anonymous.status_code == 404


def test_push_is_remembered_outside_the_artifact(hub, cli, artifact, home):
    before = hash_tree(artifact)
    assert cli("push", "tiny", "--repo", "alice/tiny-MLC", "--revision", "v1").returncode == 0
    published = json.loads((home / "published.json").read_text())
    assert published["tiny"]["repo_id"] == "alice/tiny-MLC"
    assert published["tiny"]["revision"] == "v1"
    assert published["tiny"]["endpoint"] == hub.url
    assert published["tiny"]["commit"] == hub.repos["alice/tiny-MLC"].branches["v1"]
    assert hash_tree(artifact) == before


def test_artifact_changed_after_writing_is_refused(hub, cli, artifact):
    with open(artifact / "params_shard_1.bin", "ab") as f:
        f.write(b"x")
    line = error_line(cli("push", "tiny", "--repo", "alice/tiny-MLC"))
    assert "params_shard_1.bin" in line and "verify" in line
    assert hub.count("commit") == 0
