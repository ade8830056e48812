"""`personalize serve` with real HTTP requests: layout, HEAD, Range, ETag, CORS, 404s, path traversal."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from publish import hub as hubmod
from registry import store
from publish.serve import ArtifactIndex, make_server, parse_range
from registry.store import Registry
from tests.hub_env import clean_hf_env  # noqa: F401 - fixture
from tests.hub_stub import make_fake_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("clean_hf_env")  # a huggingface_hub client downloads from serve


@pytest.fixture
def served(home):
    art = make_fake_artifact(home / "artifacts" / "tiny", name="tiny")
    make_fake_artifact(home / "artifacts" / "other", name="other", seed=1)
    result = hubmod.PushResult(repo_id="alice/tiny-MLC", revision="main", endpoint="https://huggingface.co",
                               commit="b" * 40, head="b" * 40, uploaded=[], unchanged=[], deleted=[], files=[])
    store.record_push(home, "tiny", result.record())
    (home / "libs").mkdir(exist_ok=True)
    (home / "libs" / "tiny-q0f16_cs1k-webgpu.wasm").write_bytes(b"\0asm\1\0\0\0")
    server = make_server(ArtifactIndex.from_registry(Registry(home)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.server_address[1], art
    server.shutdown()
    server.server_close()


def request(port: int, method: str, path: str, headers: dict | None = None):
    """A raw request: http.client sends the path exactly as given (no '..' normalization)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_get_serves_listed_files_with_etag_cors_and_length(served):
    port, art = served
    lineage = json.loads((art / "personalize.json").read_text())
    for rel, rec in lineage["files"].items():
        status, headers, body = request(port, "GET", f"/local/tiny/resolve/main/{rel}")
        assert status == 200, rel
        assert body == (art / rel).read_bytes()
        assert headers["etag"] == f'"{rec["sha256"]}"' and hashlib.sha256(body).hexdigest() == rec["sha256"]
        assert int(headers["content-length"]) == rec["size"]
        assert headers["access-control-allow-origin"] == "*"
        assert "etag" in headers["access-control-expose-headers"].lower()
        assert "content-range" in headers["access-control-expose-headers"].lower()
        assert headers["accept-ranges"] == "bytes"
    status, headers, body = request(port, "GET", "/local/tiny/resolve/main/personalize.json")
    assert status == 200 and json.loads(body)["name"] == "tiny"
    assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'


def test_pushed_repo_id_is_an_alias(served):
    port, art = served
    status, headers, body = request(port, "GET", "/alice/tiny-MLC/resolve/main/mlc-chat-config.json")
    assert status == 200 and body == (art / "mlc-chat-config.json").read_bytes()
    assert headers["x-repo-commit"] == "b" * 40
    assert request(port, "GET", f"/alice/tiny-MLC/resolve/{'b' * 40}/tokenizer.json")[0] == 200
    assert request(port, "GET", "/local/other/resolve/main/tokenizer.json")[0] == 200
    status, _, body = request(port, "GET", "/api/models")
    ids = {r["id"] for r in json.loads(body)["models"]}
    assert ids == {"local/tiny", "local/other", "alice/tiny-MLC"}


def test_local_commit_resolves_and_a_readd_moves_it(served, home):
    """`/local/<name>/resolve/<X-Repo-Commit>/` answers; after the artifact changes, the old commit is 404."""
    port, art = served
    status, headers, _ = request(port, "HEAD", "/local/other/resolve/main/tokenizer.json")
    commit = headers["x-repo-commit"]
    assert status == 200 and commit == hashlib.sha1((home / "artifacts" / "other" / "personalize.json").read_bytes()).hexdigest()
    status, headers, body = request(port, "GET", f"/local/other/resolve/{commit}/tokenizer.json")
    assert status == 200 and headers["x-repo-commit"] == commit
    assert request(port, "GET", f"/local/other/resolve/{'c' * 40}/tokenizer.json")[0] == 404
    assert request(port, "GET", f"/local/tiny/resolve/{'b' * 40}/tokenizer.json")[0] == 404  # the alias's commit
    # `add --force` under the same name: new files, new personalize.json, so a new commit
    make_fake_artifact(home / "artifacts" / "other", name="other", seed=7)
    new = request(port, "HEAD", "/local/other/resolve/main/tokenizer.json")[1]["x-repo-commit"]
    assert new != commit
    assert request(port, "GET", f"/local/other/resolve/{commit}/params_shard_0.bin")[0] == 404
    assert request(port, "GET", f"/local/other/resolve/{new}/params_shard_0.bin")[0] == 200
    models = {m["id"]: m for m in json.loads(request(port, "GET", "/api/models")[2])["models"]}
    assert models["local/other"]["model_url"] == f"http://127.0.0.1:{port}/local/other/resolve/{new}/"
    assert models["local/other"]["commit"] == new and new[:12] in models["local/other"]["model_id"]


def test_chat_page_and_listing(served):
    port, _ = served
    status, headers, body = request(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"window.personalizeRun" in body and b"/api/models" in body
    doc = json.loads(request(port, "GET", "/api/models")[2])
    assert doc["webllm_url"] == "https://esm.run/@mlc-ai/web-llm@0.2.79" and doc["webllm_version"] == "0.2.79"
    tiny = next(m for m in doc["models"] if m["id"] == "local/tiny")
    assert tiny["name"] == "tiny" and tiny["model_type"] == "llama" and tiny["quantization"] == "q0f16"
    assert tiny["required_features"] == ["shader-f16"] and tiny["context_window_size"] == 512
    assert tiny["model_lib"] is None  # nothing recorded which prebuilt library it runs on


def _page_server(home, tmp_path, library):
    """A server with a fake web-llm package and a prebuilt mirror; `library` goes into personalize.json."""
    from publish.serve import PageOptions

    art = make_fake_artifact(home / "artifacts" / "tiny", name="tiny")
    lineage = json.loads((art / "personalize.json").read_text())
    lineage["prebuilt_library"] = library
    (art / "personalize.json").write_text(json.dumps(lineage))
    webllm = tmp_path / "web-llm"
    (webllm / "lib").mkdir(parents=True)
    (webllm / "lib" / "index.js").write_text("export const version = 'fake';\n")
    (webllm / "package.json").write_text('{"version": "0.2.79"}')
    prebuilt = tmp_path / "prebuilt"
    (prebuilt / "v0_2_48").mkdir(parents=True)
    (prebuilt / "v0_2_48" / "Lib-q0f16-ctx4k_cs1k-webgpu.wasm").write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    server = make_server(ArtifactIndex.from_registry(Registry(home)), "127.0.0.1", 0,
                         page=PageOptions(webllm_dir=webllm, prebuilt_dir=prebuilt))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


NEW_DIR = {"library": "v0_2_86/base/Lib-q0f16_cs1k-webgpu.wasm", "webllm_range": ">=0.2.86 <=0.2.86",
           "url": "https://example.org/v0_2_86/base/Lib-q0f16_cs1k-webgpu.wasm", "context_window_size": 4096,
           "required_features": ["shader-f16"]}
OLD_DIR = {"library": "v0_2_48/Lib-q0f16-ctx4k_cs1k-webgpu.wasm", "webllm_range": ">=0.2.51 <=0.2.79",
           "url": "https://example.org/v0_2_48/Lib-q0f16-ctx4k_cs1k-webgpu.wasm"}


@pytest.mark.parametrize("library,expect", [
    # what `add` records: the newest directory first, the others in also_in; web-llm 0.2.79 loads v0_2_48,
    # which the local mirror has
    ({**NEW_DIR, "also_in": [OLD_DIR]}, "/prebuilt/v0_2_48/Lib-q0f16-ctx4k_cs1k-webgpu.wasm"),
    (NEW_DIR, None),  # only in a directory web-llm 0.2.79 cannot load
    ({"url": "https://example.org/x/Other-webgpu.wasm"}, "https://example.org/x/Other-webgpu.wasm"),
])
def test_page_serves_local_webllm_and_prebuilt_mirror(home, tmp_path, library, expect):
    server = _page_server(home, tmp_path, library)
    port = server.server_address[1]
    try:
        doc = json.loads(request(port, "GET", "/api/models")[2])
        assert doc["webllm_url"] == "/vendor/web-llm/lib/index.js"
        (tiny,) = doc["models"]
        want = expect if expect is None or expect.startswith("https://") else f"http://127.0.0.1:{port}{expect}"
        assert tiny["model_lib"] == want
        if expect and "also_in" in library:
            assert tiny["webllm_range"] == ">=0.2.51 <=0.2.79" and tiny["context_window_size"] == 4096
            assert tiny["required_features"] == ["shader-f16"]
        status, headers, body = request(port, "GET", "/vendor/web-llm/lib/index.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript") and b"fake" in body
        status, headers, body = request(port, "GET", "/prebuilt/v0_2_48/Lib-q0f16-ctx4k_cs1k-webgpu.wasm")
        assert status == 200 and headers["content-type"] == "application/wasm" and body == b"\0asm\1\0\0\0"
        for bad in ["/vendor/web-llm/../secret.txt", "/vendor/web-llm/lib/..%2f..%2fsecret.txt",
                    "/prebuilt/../secret.txt", "/prebuilt/%2e%2e/secret.txt", "/vendor/web-llm/missing.js"]:
            status, _, body = request(port, "GET", bad)
            assert status == 404 and b"SECRET" not in body, bad
    finally:
        server.shutdown()
        server.server_close()


def test_page_routes_are_404_without_their_directories(served):
    port, _ = served
    assert request(port, "GET", "/vendor/web-llm/lib/index.js")[0] == 404
    assert request(port, "GET", "/prebuilt/v0_2_48/x.wasm")[0] == 404


def test_head_has_headers_and_no_body(served):
    port, art = served
    size = (art / "params_shard_0.bin").stat().st_size
    status, headers, body = request(port, "HEAD", "/local/tiny/resolve/main/params_shard_0.bin")
    assert status == 200 and body == b"" and int(headers["content-length"]) == size and headers["etag"]


@pytest.mark.parametrize("rng,start,end", [("bytes=10-19", 10, 19), ("bytes=100-", 100, None),
                                           ("bytes=-7", -7, None), ("bytes=0-0", 0, 0),
                                           ("bytes=5-999999999", 5, None)])
def test_range_requests(served, rng, start, end):
    port, art = served
    data = (art / "params_shard_1.bin").read_bytes()
    want = data[start:] if end is None else data[start:end + 1]
    status, headers, body = request(port, "GET", "/local/tiny/resolve/main/params_shard_1.bin", {"Range": rng})
    assert status == 206 and body == want and int(headers["content-length"]) == len(want)
    first = start if start >= 0 else len(data) + start
    assert headers["content-range"] == f"bytes {first}-{first + len(want) - 1}/{len(data)}"


def test_unsatisfiable_range_and_stale_if_range(served):
    port, art = served
    size = (art / "params_shard_1.bin").stat().st_size
    path = "/local/tiny/resolve/main/params_shard_1.bin"
    status, headers, body = request(port, "GET", path, {"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}" and body == b""
    status, _, body = request(port, "GET", path, {"Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
    assert status == 200 and len(body) == size  # the client's copy is another version: whole file
    status, _, body = request(port, "GET", path, {"Range": "bytes=0-1,5-6"})
    assert status == 200 and len(body) == size  # multi-range: ignored, as RFC 9110 allows


def test_if_none_match_gives_304(served):
    port, art = served
    path = "/local/tiny/resolve/main/tokenizer.json"
    etag = request(port, "HEAD", path)[1]["etag"]
    status, headers, body = request(port, "GET", path, {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["etag"] == etag
    assert request(port, "GET", path, {"If-None-Match": '"other"'})[0] == 200
    # If-None-Match compares weakly (RFC 9110 13.1.2): a cache holding W/"etag" gets 304 too.
    status, _, body = request(port, "GET", path, {"If-None-Match": f'"other", W/{etag}'})
    assert status == 304 and body == b""
    assert request(port, "GET", path, {"If-None-Match": 'W/"other"'})[0] == 200


def _bound_server(home, **kwargs):
    server = make_server(ArtifactIndex.from_registry(Registry(home)), "127.0.0.1", 0, **kwargs)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def test_half_sent_request_times_out_and_does_not_hold_the_pool(served, home):
    import socket
    import time

    server = _bound_server(home, workers=1, timeout=0.5)
    port = server.server_address[1]
    try:
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"GET /local/tiny/resolve/main/tokenizer.json HTTP/1.1\r\nHost: x")  # never finished
        t0 = time.monotonic()
        status, _, _ = request(port, "GET", "/local/tiny/resolve/main/mlc-chat-config.json")
        assert status == 200 and time.monotonic() - t0 < 5  # the one worker was freed by the timeout
        stalled.settimeout(5)
        assert stalled.recv(1024) == b""  # the server closed the stalled connection
        stalled.close()
    finally:
        server.shutdown()
        server.server_close()


def test_worker_threads_are_bounded(served, home):
    import socket
    import time

    server = _bound_server(home, workers=3, timeout=2)
    port = server.server_address[1]
    try:
        held = []
        for _ in range(12):  # twelve slow clients at once
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\n")
            held.append(s)
        time.sleep(0.3)
        workers = [t for t in threading.enumerate() if t.name.startswith("personalize-serve")]
        assert 1 <= len(workers) <= 3
        for s in held:
            s.close()
        assert request(port, "GET", "/local/tiny/resolve/main/tokenizer.json")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_partial_dirs_and_vanished_artifacts_are_404_not_a_crash(served, home):
    port, art = served
    import shutil

    partial = home / "artifacts" / f".tiny2.partial-00000000-{2**22}-1-abc"
    shutil.copytree(art, partial)  # a complete-looking unfinished write
    status, _, body = request(port, "GET", "/api/models")
    assert status == 200 and not any("partial" in r["id"] for r in json.loads(body)["models"])
    assert request(port, "GET", f"/local/{partial.name}/resolve/main/tokenizer.json")[0] == 404
    # An artifact that disappears between the listing and the read (rm, a replace): 404, the server lives on.
    index = ArtifactIndex(lambda: ["tiny", "gone"], Registry(home).resolve, home)
    server = make_server(index, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        p2 = server.server_address[1]
        assert request(p2, "GET", "/local/gone/resolve/main/tokenizer.json")[0] == 404
        assert request(p2, "GET", "/local/tiny/resolve/main/tokenizer.json")[0] == 200
        status, _, body = request(p2, "GET", "/api/models")
        assert status == 200 and {m["name"] for m in json.loads(body)["models"]} == {"tiny"}  # "gone" left out
    finally:
        server.shutdown()
        server.server_close()


def test_cors_preflight(served):
    port, _ = served
    status, headers, body = request(port, "OPTIONS", "/local/tiny/resolve/main/params_shard_0.bin",
                                    {"Origin": "https://example.org", "Access-Control-Request-Method": "GET",
                                     "Access-Control-Request-Headers": "range"})
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "GET" in headers["access-control-allow-methods"]
    assert "range" in headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize("path", [
    "/local/nope/resolve/main/tokenizer.json",
    "/local/tiny/resolve/main/does-not-exist.json",
    "/local/tiny/resolve/dev/tokenizer.json",  # only main (and the pushed revision/commit) exist
    "/local/tiny/tokenizer.json",
    "/libs/missing.wasm",
])
def test_not_found(served, path):
    port, _ = served
    status, headers, _ = request(port, "GET", path)
    assert status == 404 and headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", [
    "/local/tiny/resolve/main/../../../../etc/passwd",
    "/local/tiny/resolve/main/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/local/tiny/resolve/main/%2e%2e/%2e%2e/home/personalize.json",
    "/local/tiny/resolve/main//etc/passwd",
    "/local/tiny/resolve/main/secret.txt",  # in the directory, but not part of the artifact
    "/local/tiny/resolve/main/link.json",  # a listed symlink pointing outside
    "/local/..%2f..%2fetc/resolve/main/passwd",
    "/libs/..%2fpublished.json",
    "/libs/../published.json",
])
def test_no_path_traversal(served, path, home):
    port, art = served
    (art / "secret.txt").write_text("TOP-SECRET-CONTENT")
    outside = home / "outside.json"
    outside.write_text('{"leak": "OUTSIDE-CONTENT"}')
    (art / "link.json").symlink_to(outside)
    lineage = json.loads((art / "personalize.json").read_text())
    lineage["files"]["link.json"] = {"sha256": "0" * 64, "size": outside.stat().st_size}
    (art / "personalize.json").write_text(json.dumps(lineage))
    status, _, body = request(port, "GET", path)
    assert status == 404 and b"CONTENT" not in body and b"root:" not in body


def test_libs_are_served(served, home):
    port, _ = served
    status, headers, body = request(port, "GET", "/libs/tiny-q0f16_cs1k-webgpu.wasm")
    assert status == 200 and body == b"\0asm\1\0\0\0" and headers["content-type"] == "application/wasm"


def test_huggingface_hub_client_downloads_from_serve(served, tmp_path):
    port, art = served
    from huggingface_hub import hf_hub_download

    got = hf_hub_download("local/tiny", "params_shard_2.bin", endpoint=f"http://127.0.0.1:{port}",
                          cache_dir=tmp_path, token=False)
    assert Path(got).read_bytes() == (art / "params_shard_2.bin").read_bytes()


def test_parse_range_edge_cases():
    assert parse_range("", 10) is None and parse_range("bytes=", 10) is None and parse_range("items=1-2", 10) is None
    assert parse_range("bytes=-0", 10) == "unsatisfiable" and parse_range("bytes=5-2", 10) == "unsatisfiable"
    assert parse_range("bytes=-20", 10) == (0, 9) and parse_range("bytes=0-", 0) == "unsatisfiable"


def test_cli_serve_subprocess(home):
    art = make_fake_artifact(home / "artifacts" / "tiny", name="tiny")
    env = {**os.environ, "PERSONALIZE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", "from personalize.cli import main; main()", "serve",
                             "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO_ROOT)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        port = int(url.rsplit(":", 1)[1])
        status, _, body = request(port, "GET", "/local/tiny/resolve/main/tensor-cache.json")
        assert status == 200 and body == (art / "tensor-cache.json").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("flag,value,words", [("--webllm", "{tmp}", "not a web-llm package"),
                                              ("--prebuilt", "{tmp}/nope", "no directory")])
def test_cli_serve_refuses_bad_page_options(home, tmp_path, flag, value, words):
    from conftest import run_cli

    code, out, err = run_cli("serve", "--port", "0", flag, value.format(tmp=tmp_path),
                             env={"PERSONALIZE_HOME": str(home)})
    assert code == 2 and words in err and "Traceback" not in err
