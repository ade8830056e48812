"""In-process against the Hub stub: `hf://` sources for `add` (ingest.hub), the push's stale-file rule and
after-push check (publish.hub), card re-rendering, and the push records of the local store."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest

from huggingface_hub.utils.sha import git_hash

from ingest import hub as pullmod
from publish import hub as hubmod
from registry import store
from tests.hub_env import clean_hf_env  # noqa: F401 - fixture
from tests.hub_stub import HubStub, hash_tree, make_fake_artifact

TOKEN = "hf_pullTOKEN"
pytestmark = pytest.mark.usefixtures("clean_hf_env")


@pytest.fixture
def hub():
    # clean_hf_env turns Xet off: huggingface_hub picks it whenever hf_xet is installed; the stub speaks LFS only.
    with HubStub(tokens={TOKEN: "alice"}) as stub:
        yield stub


def upload(hub: HubStub, repo_id: str, files: dict[str, bytes]) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()]
    return api.create_commit(repo_id, operations=ops, commit_message="upload").oid


SOURCE = {
    "config.json": b'{"model_type": "llama"}',
    "generation_config.json": b"{}",
    "model.safetensors": b"\0" * 2048,
    "pytorch_model.bin": b"\1" * 1024,  # the same weights again in torch format: not downloaded
    "tokenizer.json": b'{"model": {}}',
    "tokenizer_config.json": b"{}",
    "chat_template.jinja": b"{{ messages }}",
    "original/consolidated.00.pth": b"\2" * 512,  # Meta's own checkpoint layout: not downloaded
    "onnx/model.onnx": b"\3" * 256,
}


def test_download_source_takes_only_what_add_reads_and_pins_the_commit(hub, tmp_path):
    sha = upload(hub, "alice/src", SOURCE)
    local, revision = pullmod.download_source("hf://alice/src", endpoint=hub.url, cache_dir=tmp_path / "c")
    assert revision == sha
    got = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
    assert got == ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                   "tokenizer.json", "tokenizer_config.json"]
    assert (Path(local) / "model.safetensors").read_bytes() == SOURCE["model.safetensors"]


def test_download_source_revision_and_torch_only_repo(hub, tmp_path):
    first = upload(hub, "alice/src", {"config.json": b'{"v": 1}', "pytorch_model.bin": b"\1" * 64})
    upload(hub, "alice/src", {"config.json": b'{"v": 2}'})
    local, revision = pullmod.download_source(f"hf://alice/src@{first}", endpoint=hub.url, cache_dir=tmp_path)
    assert revision == first
    assert json.loads((local / "config.json").read_text()) == {"v": 1}
    assert (local / "pytorch_model.bin").is_file()  # no safetensors: the torch weights are the weights
    _, head = pullmod.download_source("hf://alice/src@main", endpoint=hub.url, cache_dir=tmp_path)
    assert head == hub.repos["alice/src"].branches["main"] != first


@pytest.mark.parametrize("spec,fragment", [
    ("hf://alice/nope", "not found"),
    ("hf://alice/src@no-such-branch", "revision not found"),
    ("hf://not-a-repo-id", "invalid Hub source"),
    ("hf://datasets/alice/src", "not a model repo"),
    ("hf://alice/src/config.json", "not a model repo"),
])
def test_download_source_errors_are_typed(hub, tmp_path, spec, fragment):
    upload(hub, "alice/src", SOURCE)
    with pytest.raises(pullmod.HubError) as info:
        pullmod.download_source(spec, endpoint=hub.url, cache_dir=tmp_path)
    assert fragment in str(info.value) and info.value.hint


def test_download_source_refuses_a_repo_without_config(hub, tmp_path):
    upload(hub, "alice/data", {"data.csv": b"a,b\n"})
    with pytest.raises(hubmod.HubError, match="neither config.json nor adapter_config.json"):
        pullmod.download_source("hf://alice/data", endpoint=hub.url, cache_dir=tmp_path)


def test_download_source_unreachable_endpoint(tmp_path):
    with pytest.raises(hubmod.HubError, match="cannot reach the Hub"):
        pullmod.download_source("hf://alice/src", endpoint="http://127.0.0.1:9", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- plan and check
def _view(files: dict[str, bytes]) -> dict[str, hubmod.PublishFile]:
    return {k: hubmod.PublishFile(k, len(v), hashlib.sha256(v).hexdigest(), v) for k, v in files.items()}


def test_same_content_compares_lfs_by_sha256_and_git_files_by_blob_id_and_stale_shards_only():
    view = _view({"a.json": b"{}", "params_shard_0.bin": b"x" * 10, "b.json": b"[1]"})
    remote = {
        "a.json": hubmod.RemoteFile("a.json", 2, None, git_hash(b"{}")),
        "b.json": hubmod.RemoteFile("b.json", 3, None, git_hash(b"[2]")),  # same size, other bytes
        "params_shard_0.bin": hubmod.RemoteFile("params_shard_0.bin", 10, view["params_shard_0.bin"].sha256, "x"),
        "params_shard_7.bin": hubmod.RemoteFile("params_shard_7.bin", 5, "0" * 64, "y"),  # stale shard
        "notes.txt": hubmod.RemoteFile("notes.txt", 1, None, "z"),  # the user's own file: kept
    }
    assert [p for p in sorted(view) if hubmod.same_content(view[p], remote.get(p))] == ["a.json", "params_shard_0.bin"]
    assert hubmod.stale_files(view, remote) == ["params_shard_7.bin"]


def test_check_remote_reports_every_kind_of_mismatch():
    view = _view({"a.bin": b"aaaa", "b.bin": b"bbbb", "c.bin": b"cccc", "d.json": b"{}"})
    remote = {
        "a.bin": hubmod.RemoteFile("a.bin", 4, view["a.bin"].sha256, "-"),
        "b.bin": hubmod.RemoteFile("b.bin", 5, "1" * 64, "-"),
        "c.bin": hubmod.RemoteFile("c.bin", 4, "2" * 64, "-"),
    }
    with pytest.raises(hubmod.HubVerifyError) as info:
        hubmod.check_remote(view, remote, "alice/x")
    msg = str(info.value)
    assert "b.bin has 5 bytes" in msg and "c.bin has different content" in msg and "d.json is missing" in msg
    assert "a.bin" not in msg
    remote["b.bin"] = hubmod.RemoteFile("b.bin", 4, view["b.bin"].sha256, "-")
    remote["c.bin"] = hubmod.RemoteFile("c.bin", 4, view["c.bin"].sha256, "-")
    remote["d.json"] = hubmod.RemoteFile("d.json", 2, None, git_hash(b"{}"))
    assert [f["path"] for f in hubmod.check_remote(view, remote, "alice/x")] == ["a.bin", "b.bin", "c.bin", "d.json"]


def test_push_detects_a_hub_that_stores_something_else(hub, tmp_path, monkeypatch):
    art = make_fake_artifact(tmp_path / "tiny")
    real = hubmod.list_remote_files
    calls = []

    def lying(api, repo_id, revision):  # the second listing (after the commit) reports a truncated shard
        files = real(api, repo_id, revision)
        calls.append(revision)
        if len(calls) == 2:
            f = files["params_shard_2.bin"]
            files["params_shard_2.bin"] = hubmod.RemoteFile(f.path, f.size - 1, f.sha256, f.blob_id)
        return files

    monkeypatch.setattr(hubmod, "list_remote_files", lying)
    with pytest.raises(hubmod.HubVerifyError, match="params_shard_2.bin has"):
        hubmod.push_artifact(art, "alice/tiny", token=TOKEN, endpoint=hub.url)


# ----------------------------------------------------------------------------- the model card
def test_card_is_rerendered_for_the_repo_and_the_pushed_lineage_matches(hub, tmp_path, monkeypatch):
    fake = types.ModuleType("artifacts.model_card")
    # rendered from the artifact directory, so the card keeps its VRAM estimate (review §3 bug 1)
    fake.render_model_card = lambda lineage, chat, repo_id, artifact_dir: (
        f"---\nlicense: mit\n---\n# {lineage['name']} at {repo_id} from {artifact_dir.name}\n")
    monkeypatch.setitem(sys.modules, "artifacts.model_card", fake)
    art = make_fake_artifact(tmp_path / "tiny")
    before = hash_tree(art)
    result = hubmod.push_artifact(art, "alice/tiny", token=TOKEN, endpoint=hub.url)
    assert hash_tree(art) == before  # the local artifact is untouched
    card = hub.file_bytes("alice/tiny", "README.md")
    assert card == b"---\nlicense: mit\n---\n# tiny at alice/tiny from tiny\n"
    pushed = json.loads(hub.file_bytes("alice/tiny", "personalize.json"))
    assert pushed["files"]["README.md"] == {"sha256": hashlib.sha256(card).hexdigest(), "size": len(card)}
    local = json.loads((art / "personalize.json").read_text())
    assert {k: v for k, v in pushed["files"].items() if k != "README.md"} == \
           {k: v for k, v in local["files"].items() if k != "README.md"}
    assert "README.md" in result.uploaded
    # Deterministic: a second push re-renders the same bytes and sends nothing.
    hub.reset_counts()
    again = hubmod.push_artifact(art, "alice/tiny", token=TOKEN, endpoint=hub.url)
    assert again.commit is None and hub.count("commit") == 0


def test_published_records_round_trip(tmp_path):
    result = hubmod.PushResult(repo_id="alice/x", revision="main", endpoint="https://huggingface.co",
                               commit="c" * 40, head="c" * 40, uploaded=[], unchanged=[], deleted=[], files=[])
    assert store.last_push(tmp_path, "x") is None
    store.record_push(tmp_path, "x", result.record())
    store.record_push(tmp_path, "y", result.record())
    rec = store.last_push(tmp_path, "x")
    assert rec["repo_id"] == "alice/x" and rec["commit"] == "c" * 40 and set(store.read_published(tmp_path)) == {"x", "y"}
    assert store.forget_push(tmp_path, "x") is True and store.forget_push(tmp_path, "x") is False
    assert set(store.read_published(tmp_path)) == {"y"}


def test_an_endpoint_answering_200_with_html_is_one_typed_error(tmp_path):
    """Issue 11 item 6: a wrong HF_ENDPOINT (any web server) gave a JSONDecodeError traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotAHub(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b"<html>a login page</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotAHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        art = make_fake_artifact(tmp_path / "tiny")
        with pytest.raises(hubmod.HubError, match="not JSON") as info:
            hubmod.push_artifact(art, "alice/tiny", token=TOKEN, endpoint=url)
        assert "HF_ENDPOINT" in info.value.hint
        with pytest.raises(pullmod.HubError, match="not JSON"):
            pullmod.download_source("hf://alice/src", endpoint=url, cache_dir=tmp_path / "c")
    finally:
        server.shutdown()
        server.server_close()
