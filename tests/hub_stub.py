"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub 2.x to push and pull.

It speaks the endpoints that `HfApi.create_repo`, `create_commit` / `upload_folder` (preupload, LFS batch,
basic LFS PUT + verify, ndjson commit), `list_repo_tree`, `get_paths_info`, `repo_info`, `whoami`,
`snapshot_download` and `hf_hub_download` (HEAD + GET on /resolve/) call. It does not speak Xet: clients
must run with HF_HUB_DISABLE_XET=1 (huggingface_hub picks Xet purely on whether `hf_xet` is installed,
not on anything the server advertises), which takes the plain LFS path.

LFS objects are stored once, by sha256, and the batch endpoint answers "already present" for known
objects, as the real Hub does; that is what makes an interrupted push resumable. Every request is
recorded as (route, method, path) so tests can count uploads, and `fail_next` makes one route fail
once, to simulate an interrupted push.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files >= 10 MB in LFS whatever their name
DEFAULT_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.gguf filter=lfs diff=lfs merge=lfs -text\n"
    "*.wasm filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git blob id the Hub reports for a file: huggingface_hub's own function, not a copy of ours."""
    from huggingface_hub.utils.sha import git_hash

    return git_hash(data)


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclasses.dataclass(frozen=True)
class Entry:
    size: int
    content: bytes | None  # regular files: the bytes; LFS files: None
    lfs_sha256: str | None

    @property
    def blob_oid(self) -> str:
        if self.lfs_sha256 is not None:
            return git_blob_sha1(lfs_pointer(self.lfs_sha256, self.size))
        return git_blob_sha1(self.content or b"")

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.blob_oid


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, dict[str, Entry]] = dataclasses.field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


@dataclasses.dataclass
class Failure:
    route: str
    status: int
    skip: int  # let this many matching requests through first


ROUTES = [
    ("whoami", "GET", r"/api/whoami-v2"),
    ("create_repo", "POST", r"/api/repos/create"),
    ("validate_yaml", "POST", r"/api/validate-yaml"),
    ("repo_info", "GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?"),
    ("tree", "GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"),
    ("paths_info", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)"),
    ("preupload", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)"),
    ("commit", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)"),
    ("branch", "POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)"),
    ("lfs_batch", "POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch"),
    ("lfs_upload", "PUT", r"/lfs-objects/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})"),
    ("lfs_verify", "POST", r"/lfs-verify/(?P<repo>[^/]+/[^/]+)"),
    ("resolve", "GET|HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
]
_COMPILED = [(name, methods.split("|"), re.compile(pattern + r"\Z")) for name, methods, pattern in ROUTES]


class HubStub:
    """Start with `with HubStub(tokens={"hf_tok": "alice"}) as hub:`; `hub.url` is the endpoint."""

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None):
        self.tokens = dict(tokens or {})  # token -> user name
        self.orgs = dict(orgs or {})  # user -> orgs they may write to
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> content
        self.requests: list[tuple[str, str, str]] = []  # (route, method, path)
        self.failures: list[Failure] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "HubStub":
        stub = self

        class Handler(_Handler):
            hub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- test helpers
    def fail_next(self, route: str, status: int = 500, skip: int = 0) -> None:
        """Make the (skip+1)-th next request on `route` fail with `status`, once."""
        with self.lock:
            self.failures.append(Failure(route, status, skip))

    def count(self, route: str, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for r, m, _ in self.requests if r == route and (method is None or m == method))

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        with self.lock:
            repo = self.repos[repo_id]
            return dict(repo.commits[repo.branches[revision]])

    def file_bytes(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        entry = self.files(repo_id, revision)[path]
        return entry.content if entry.lfs_sha256 is None else self.lfs_objects[entry.lfs_sha256]

    # ---------------------------------------------------------------- state operations
    def _user(self, headers: Any, required: bool) -> str | None:
        auth = headers.get("authorization") or ""
        if not auth:
            if required:
                raise HttpError(401, "Invalid username or password.")
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None:  # the Hub answers exactly this for a bad token, whatever the route
            raise HttpError(401, "Invalid credentials in Authorization header")
        return user

    def _can_write(self, user: str | None, repo_id: str) -> None:
        ns = repo_id.split("/")[0]
        if user is None or (ns != user and ns not in self.orgs.get(user, [])):
            raise HttpError(403, f"You don't have the rights to create or write to {repo_id}")

    def _repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and (user is None or repo_id.split("/")[0] not in
                                              [user, *self.orgs.get(user, [])])):
            raise HttpError(404, "Repository not found", code="RepoNotFound")
        return repo

    @staticmethod
    def _commit_of(repo: Repo, rev: str) -> str:
        rev = unquote(rev)
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.commits:
            return rev
        raise HttpError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")

    @staticmethod
    def _new_commit(repo: Repo, branch: str, files: dict[str, Entry], message: str) -> str:
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(f"{parent}\n{message}\n{time.time_ns()}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].blob_oid}\n".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = files
        repo.branches[branch] = oid
        return oid

    def _is_lfs(self, files: dict[str, Entry], path: str, size: int, sample: bytes) -> bool:
        if size >= LFS_THRESHOLD or b"\0" in sample:
            return True
        attrs = files.get(".gitattributes")
        patterns = DEFAULT_GITATTRIBUTES if attrs is None else (attrs.content or b"").decode()
        for line in patterns.splitlines():
            parts = line.split()
            if len(parts) >= 2 and "filter=lfs" in parts[1:]:
                if fnmatch.fnmatch(path, parts[0]) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], parts[0]):
                    return True
        return False

    @staticmethod
    def _tree_entry(path: str, entry: Entry) -> dict:
        doc = {"type": "file", "oid": entry.blob_oid, "size": entry.size, "path": path}
        if entry.lfs_sha256 is not None:
            doc["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size,
                          "pointerSize": len(lfs_pointer(entry.lfs_sha256, entry.size))}
        return doc


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, doc: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), headers)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        route, match = "unknown", None
        for name, methods, pattern in _COMPILED:
            m = pattern.match(path)
            if m and self.command in methods:
                route, match = name, m
                break
        hub = self.hub
        with hub.lock:
            hub.requests.append((route, self.command, path))
            failure = next((f for f in hub.failures if f.route == route), None)
            if failure is not None and failure.skip > 0:
                failure.skip -= 1
                failure = None
            elif failure is not None:
                hub.failures.remove(failure)
        body = self._body() if self.command in ("POST", "PUT") else b""
        try:
            if failure is not None:
                raise HttpError(failure.status, f"injected failure on {route}")
            if match is None:
                raise HttpError(404, f"no such endpoint: {self.command} {path}")
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            getattr(self, f"_route_{route}")(body=body, params=params, **match.groupdict())
        except HttpError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message, **err.extra}, err.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _base(self) -> str:
        return f"http://{self.headers.get('host')}"

    # ---------------------------------------------------------------- routes
    def _route_whoami(self, body: bytes, params: dict) -> None:
        user = self.hub._user(self.headers, required=True)
        orgs = [{"name": o, "type": "org"} for o in self.hub.orgs.get(user, [])]
        self._json({"type": "user", "name": user, "fullname": user, "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _route_validate_yaml(self, body: bytes, params: dict) -> None:
        self._json({"errors": [], "warnings": []})

    def _route_create_repo(self, body: bytes, params: dict) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=True)
        doc = json.loads(body or b"{}")
        repo_id = f"{doc.get('organization') or user}/{doc['name']}"
        hub._can_write(user, repo_id)
        with hub.lock:
            if repo_id in hub.repos:
                # the Hub's 409 carries the url too; create_repo(exist_ok=True) reads it
                raise HttpError(409, "You already created this model repo",
                                extra={"url": f"{self._base()}/{repo_id}"})
            repo = Repo(repo_id, private=doc.get("visibility") == "private" or bool(doc.get("private")))
            attrs = DEFAULT_GITATTRIBUTES.encode()
            hub._new_commit(repo, "main", {".gitattributes": Entry(len(attrs), attrs, None)}, "initial commit")
            hub.repos[repo_id] = repo
        self._json({"url": f"{self._base()}/{repo_id}", "name": repo_id, "id": repo_id})

    def _route_repo_info(self, body: bytes, params: dict, repo: str, rev: str | None) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=False)
        with hub.lock:
            r = hub._repo(repo, user)
            oid = hub._commit_of(r, rev or "main")
            files = r.commits[oid]
            siblings = [{"rfilename": p} for p in sorted(files)]
        self._json({"id": repo, "modelId": repo, "sha": oid, "private": r.private,
                    "siblings": siblings, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z"})

    def _route_tree(self, body: bytes, params: dict, repo: str, rev: str, path: str | None) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=False)
        recursive = params.get("recursive", "false").lower() in ("1", "true")
        prefix = (unquote(path).strip("/") + "/") if path else ""
        with hub.lock:
            files = hub._repo(repo, user).commits[hub._commit_of(hub._repo(repo, user), rev)]
        out, folders = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    folders.add(prefix + "/".join(parts[: i + 1]))
            out.append(HubStub._tree_entry(p, files[p]))
        out += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                for f in sorted(folders)]
        if prefix and not out:
            raise HttpError(404, f"{path} does not exist", code="EntryNotFound")
        self._json(out)

    def _route_paths_info(self, body: bytes, params: dict, repo: str, rev: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=False)
        form = parse_qs(body.decode())
        wanted = form.get("paths", [])
        with hub.lock:
            files = hub._repo(repo, user).commits[hub._commit_of(hub._repo(repo, user), rev)]
        self._json([HubStub._tree_entry(p, files[p]) for p in wanted if p in files])

    def _route_preupload(self, body: bytes, params: dict, repo: str, rev: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=True)
        hub._can_write(user, repo)
        doc = json.loads(body)
        with hub.lock:
            r = hub._repo(repo, user)
            files = r.commits[hub._commit_of(r, rev)] if unquote(rev) in r.branches else {}
        out = []
        for f in doc["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = hub._is_lfs(files, f["path"], f["size"], sample)
            existing = files.get(f["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.lfs_sha256 else existing.blob_oid
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        self._json({"files": out, "commitOid": None})

    def _route_lfs_batch(self, body: bytes, params: dict, repo: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=True)
        hub._can_write(user, repo)
        hub._repo(repo, user)
        doc = json.loads(body)
        objects = []
        for obj in doc["objects"]:
            oid, size = obj["oid"], obj["size"]
            with hub.lock:
                present = oid in hub.lfs_objects and len(hub.lfs_objects[oid]) == size
            if present:
                objects.append({"oid": oid, "size": size})
            else:
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self._base()}/lfs-objects/{repo}/{oid}"},
                    "verify": {"href": f"{self._base()}/lfs-verify/{repo}"},
                }})
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _route_lfs_upload(self, body: bytes, params: dict, repo: str, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HttpError(400, "content does not match its oid")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = body
        self._send(200)

    def _route_lfs_verify(self, body: bytes, params: dict, repo: str) -> None:
        doc = json.loads(body)
        with self.hub.lock:
            data = self.hub.lfs_objects.get(doc["oid"])
        if data is None or len(data) != doc["size"]:
            raise HttpError(404, "object not uploaded")
        self._json({"success": True})

    def _route_branch(self, body: bytes, params: dict, repo: str, rev: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=True)
        hub._can_write(user, repo)
        doc = json.loads(body or b"{}")
        with hub.lock:
            r = hub._repo(repo, user)
            branch = unquote(rev)
            if branch in r.branches:
                raise HttpError(409, f"Reference already exists: {branch}")
            r.branches[branch] = hub._commit_of(r, doc.get("startingPoint") or "main")
        self._json({"success": True})

    def _route_commit(self, body: bytes, params: dict, repo: str, rev: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=True)
        hub._can_write(user, repo)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        with hub.lock:
            r = hub._repo(repo, user)
            branch = unquote(rev)
            files = dict(r.commits[hub._commit_of(r, branch)])
            header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
            parent = header.get("parentCommit")
            if parent and not r.branches[branch].startswith(parent):
                raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = Entry(len(data), data, None)
                elif key == "lfsFile":
                    data = hub.lfs_objects.get(value["oid"])
                    if data is None:
                        raise HttpError(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                    files[value["path"]] = Entry(len(data), None, value["oid"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HttpError(404, "A file with this name doesn't exist", code="EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise HttpError(400, f"unknown commit operation {key}")
            oid = hub._new_commit(r, branch, files, header.get("summary", ""))
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self._base()}/{repo}/commit/{oid}",
                    "commitMessage": header.get("summary", ""), "pullRequestUrl": None})

    def _route_resolve(self, body: bytes, params: dict, repo: str, rev: str, path: str) -> None:
        hub = self.hub
        user = hub._user(self.headers, required=False)
        path = unquote(path)
        with hub.lock:
            r = hub._repo(repo, user)
            oid = hub._commit_of(r, rev)
            entry = r.commits[oid].get(path)
            if entry is None:
                raise HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": oid})
            data = entry.content if entry.lfs_sha256 is None else hub.lfs_objects[entry.lfs_sha256]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes"}
        if entry.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = entry.size
        start, end, status = 0, len(data) - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", ""))
        if m and self.command == "GET":
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                raise HttpError(416, "range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        chunk = data[start:end + 1]
        headers["Content-Length"] = len(chunk)
        self._send(status, chunk, headers, content_type="application/octet-stream")


# ------------------------------------------------------------------------------------------------------
# Small, self-consistent artifacts for the publish tests (push / share / serve), written file by file:
# a real tensor cache (artifacts.tensor_cache), an mlc-chat-config.json, tokenizer files, a model card
# and personalize.json with the sha256 and size of every other file.
CHATML = {"name": "chatml", "system_template": "<|im_start|>system\n{system_message}<|im_end|>\n",
          "system_message": "", "roles": {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
          "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}"}, "messages": [],
          "seps": ["<|im_end|>\n"], "role_content_sep": "\n", "role_empty_sep": "\n",
          "stop_str": ["<|im_end|>"], "stop_token_ids": [2]}


def make_fake_artifact(out, *, name: str = "tiny", seed: int = 0, shard_cap_bytes: int = 64 * 1024,
                       quantization: str = "q0f16", model_config: dict | None = None, card: str | None = None):
    from pathlib import Path

    import numpy as np

    from artifacts.tensor_cache import TensorCacheWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mc = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
          "num_hidden_layers": 2, "head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-5,
          "tie_word_embeddings": True, "context_window_size": 512, "prefill_chunk_size": 128,
          **(model_config or {})}
    rng = np.random.default_rng(seed)
    dtype = {"q0f16": np.float16, "q0f32": np.float32}.get(quantization, np.float16)
    writer = TensorCacheWriter(out, shard_cap_bytes=shard_cap_bytes)
    h, i, v = mc["hidden_size"], mc["intermediate_size"], mc["vocab_size"]
    kv = mc["num_key_value_heads"] * mc["head_dim"]
    writer.add("model.embed_tokens.weight", rng.standard_normal((v, h)).astype(dtype))
    for layer in range(mc["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        writer.add(f"{p}.self_attn.qkv_proj.weight", rng.standard_normal((h + 2 * kv, h)).astype(dtype))
        writer.add(f"{p}.self_attn.o_proj.weight", rng.standard_normal((h, h)).astype(dtype))
        writer.add(f"{p}.mlp.gate_up_proj.weight", rng.standard_normal((2 * i, h)).astype(dtype))
        writer.add(f"{p}.mlp.down_proj.weight", rng.standard_normal((h, i)).astype(dtype))
        writer.add(f"{p}.input_layernorm.weight", np.ones(h, dtype))
        writer.add(f"{p}.post_attention_layernorm.weight", np.ones(h, dtype))
    writer.add("model.norm.weight", np.ones(h, dtype))
    writer.finish({"ParamSize": writer.param_count, "ParamBytes": writer.param_bytes, "BitsPerParam": 16.0})
    chat_config = {"version": "0.1.0", "model_type": "llama", "quantization": quantization, "model_config": mc,
                   "vocab_size": v, "context_window_size": mc["context_window_size"], "sliding_window_size": -1,
                   "prefill_chunk_size": mc["prefill_chunk_size"], "attention_sink_size": -1,
                   "tensor_parallel_shards": 1, "pipeline_parallel_stages": 1,
                   "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
                   "conv_template": CHATML, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (out / "mlc-chat-config.json").write_text(json.dumps(chat_config, indent=2))
    (out / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {
        f"t{k}": k for k in range(v)}, "merges": []}, "seed": seed}))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    (out / "README.md").write_text(card or f"---\nlicense: apache-2.0\nlibrary_name: mlc-llm\n---\n# {name}\n")
    files = {}
    for path in sorted(out.iterdir()):
        if path.is_file() and path.name != "personalize.json":
            files[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                "size": path.stat().st_size}
    lineage = {"format": "personalize-artifact/1", "name": name, "created": "2026-01-01T00:00:00+00:00",
               "source": {"kind": "model", "path": "/data/tiny-llama", "hub": "example/TinyLlama-Chat"},
               "model_type": "llama", "quantization": quantization, "library_key": "0123456789abcdef",
               "compiled_config": {}, "tools": {}, "files": files}
    (out / "personalize.json").write_text(json.dumps(lineage, indent=2) + "\n")
    return out


def hash_tree(root) -> dict[str, str]:
    """sha256 of every file under root, relative paths as keys."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
