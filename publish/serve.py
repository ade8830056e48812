"""`personalize serve`: every registry artifact over HTTP in the Hub's `/{repo}/resolve/{rev}/{file}` layout.

Repos are `local/<name>` for every artifact, plus the repo id each one was last pushed to, so WebLLM's
`cleanModelUrl` (which appends `/resolve/main/`) and the MLC apps can fetch from it unchanged. Only
files listed in the artifact's personalize.json (and personalize.json itself) are served, so no
request can reach outside the artifact. GET and HEAD, single byte ranges (206 / 416), ETag = the
sha256 from personalize.json (If-None-Match, strong or weak `W/"..."` -> 304), CORS for browsers
(WebLLM fetches cross-origin). Connections are handled by a bounded worker pool and each one has a
socket timeout, so slow or half-sent requests cannot pile up threads or hold a worker forever.
`/libs/<file>` serves compiled libraries (e.g. a WebGPU .wasm) from the registry's libs/ directory.

Revisions: `main`, and the commit advertised in X-Repo-Commit (for `local/<name>` the sha1 of the
artifact's personalize.json, which changes whenever the artifact does). Any other commit is 404, so a
URL pinned to a commit never serves the files of a later `add --force` under the same name, and a
re-added artifact gets a new URL that no browser cache (WebLLM never revalidates) has seen.

The chat page: `/` is a small static page (publish/page/index.html) that lists `/api/models` and chats
with an artifact through WebLLM and MLC's prebuilt WebGPU library. It imports web-llm from the npm CDN
unless `PageOptions.webllm_dir` names a local copy (served at `/vendor/web-llm/`);
`PageOptions.prebuilt_dir` serves a local mirror of MLC's libraries at `/prebuilt/`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from artifacts import Artifact, sha256_file
from artifacts.format import LINEAGE_JSON
from personalize_errors import UserError
from registry.store import read_published

# The last web-llm release that loads MLC's v0_2_48 libraries (and reads ndarray-cache.json).
WEBLLM_VERSION = "0.2.79"
WEBLLM_CDN = f"https://esm.run/@mlc-ai/web-llm@{WEBLLM_VERSION}"
PAGE_FILE = Path(__file__).with_name("page") / "index.html"

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag, X-Repo-Commit",
    "Access-Control-Max-Age": "86400",
}
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
LIB_FILE = re.compile(r"^/libs/(?P<file>[A-Za-z0-9][A-Za-z0-9._-]*)$")
# /vendor/web-llm/<path> and /prebuilt/<path>: plain names only, no '..' segment can match.
STATIC = re.compile(r"^/(?P<root>vendor/web-llm|prebuilt)/(?P<file>(?:[A-Za-z0-9@_][A-Za-z0-9._@-]*/)*"
                    r"[A-Za-z0-9_][A-Za-z0-9._-]*)$")
CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain",
                 ".wasm": "application/wasm", ".jinja": "text/plain; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".map": "application/json"}


@dataclass(frozen=True)
class PageOptions:
    """Where the chat page gets web-llm and MLC's libraries from."""

    webllm_url: str = WEBLLM_CDN  # an ES module URL; ignored when webllm_dir is set
    webllm_dir: Path | None = None  # a web-llm package directory (e.g. node_modules/@mlc-ai/web-llm)
    prebuilt_dir: Path | None = None  # a local mirror of MLC's prebuilt libraries (…/v0_2_48/*.wasm)

    def module_url(self) -> str:
        return "/vendor/web-llm/lib/index.js" if self.webllm_dir else self.webllm_url
CHUNK = 1 << 20
WORKERS = 32  # connections served at once (a browser opens ~6 per host); more wait in the queue
BACKLOG = 256  # connections accepted but waiting for a worker; beyond that new ones are closed at once
TIMEOUT_S = 30.0  # per socket operation: an idle keep-alive or half-sent request frees its worker after this


class ArtifactIndex:
    """Maps served repo ids to artifact directories, read fresh on each request (the registry may change)."""

    def __init__(self, names: Callable[[], list[str]], resolve: Callable[[str], Path], home: Path,
                 libs_dir: Path | None = None):
        self._names, self._resolve, self.home = names, resolve, Path(home)
        self.libs_dir = Path(libs_dir) if libs_dir else None

    @classmethod
    def from_registry(cls, registry: Any) -> "ArtifactIndex":
        return cls(registry.names, registry.resolve, registry.home, getattr(registry, "libs_dir", None))

    def repos(self) -> dict[str, str]:
        """{repo id: artifact name}."""
        names = self._names()
        out = {f"local/{n}": n for n in names}
        for name, rec in read_published(self.home).items():
            if name in names and rec.get("repo_id"):
                out[rec["repo_id"]] = name
        return out

    def commit(self, repo: str, name: str) -> str | None:
        """The commit id served for `repo` (advertised as X-Repo-Commit), None if the artifact is unreadable.

        The pushed commit for the repo it was pushed to; otherwise the sha1 of personalize.json, which
        lists the sha256 of every file, so it changes whenever any file does.
        """
        pushed = read_published(self.home).get(name) or {}
        if repo == pushed.get("repo_id") and pushed.get("commit"):
            return pushed["commit"]
        try:
            return Artifact(self._resolve(name)).revision
        except (UserError, OSError):
            return None

    def revisions(self, repo: str, name: str) -> set[str]:
        """The revisions `repo` answers for: main, its commit, and the branch it was pushed to."""
        commit = self.commit(repo, name)
        pushed = read_published(self.home).get(name) or {}
        branch = pushed.get("revision") if repo == pushed.get("repo_id") else None
        return {"main"} | {r for r in (commit, branch) if r}

    def lookup(self, repo: str, rev: str, file: str) -> tuple[Path, dict | None, str] | None:
        """(path on disk, lineage record or None for personalize.json, commit id) or None if not served."""
        name = self.repos().get(repo)
        if name is None or rev not in self.revisions(repo, name):
            return None
        try:  # the registry may change under us (rm, a replace): a vanished artifact is a 404, not a crash
            artifact = Artifact(self._resolve(name))
            files = artifact.files
            revision = artifact.revision
        except (UserError, OSError):
            return None
        root = artifact.path
        if file != LINEAGE_JSON and file not in files:
            return None  # only listed files: this is what rules out '..', absolute paths and symlinks out
        path = (root / file).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            return None
        # huggingface_hub clients require a commit id; the pushed commit when the files are that commit's.
        commit = self.commit(repo, name) or revision
        return path, (files.get(file) if file != LINEAGE_JSON else None), commit

    def models(self, base_url: str, page: PageOptions) -> list[dict]:
        """One entry per served repo for the chat page: what a WebLLM ModelRecord needs."""
        webllm_version = webllm_version_of(page)
        out = []
        for repo, name in sorted(self.repos().items()):
            try:
                artifact = Artifact(self._resolve(name))
                lineage, chat = artifact.lineage, artifact.chat_config
            except (UserError, OSError, ValueError):
                continue  # vanished, half-written or broken: `personalize verify` reports it
            commit = self.commit(repo, name)
            library = prebuilt_library(lineage, webllm_version)
            quant = chat.get("quantization") or lineage.get("quantization")
            features = (library or {}).get("required_features")
            out.append({
                "id": repo, "name": name, "commit": commit,
                "model_type": chat.get("model_type") or lineage.get("model_type"), "quantization": quant,
                # pinned to the commit: WebLLM uses a URL with /resolve/<rev>/ as given and caches by URL
                "model_url": f"{base_url}/{repo}/resolve/{commit}/",
                "model_id": f"{name}@{(commit or 'main')[:12]}",
                "model_lib": library_url(library, base_url, page.prebuilt_dir),
                "webllm_range": (library or {}).get("webllm_range"),
                "context_window_size": _library_context(library, chat),
                "required_features": features if isinstance(features, list) else
                                     (["shader-f16"] if quant and "f16" in quant else []),
            })
        return out


def webllm_version_of(page: "PageOptions") -> str | None:
    """The web-llm version the page imports: the local package's, or the one a CDN URL names."""
    if page.webllm_dir is not None:
        try:
            return json.loads((Path(page.webllm_dir) / "package.json").read_text()).get("version")
        except (OSError, ValueError):
            return None
    m = re.search(r"web-llm@(\d+\.\d+\.\d+)", page.webllm_url)
    return m.group(1) if m else None


def _in_range(version: str | None, spec: Any) -> bool:
    """'>=0.2.51 <=0.2.79' style ranges (what the catalog records); no version or no range: True."""
    if not version or not isinstance(spec, str):
        return True
    v = tuple(int(x) for x in version.split("."))
    for part in spec.split():
        m = re.fullmatch(r"(>=|<=|>|<|=)?(\d+\.\d+\.\d+)", part)
        if not m:
            continue
        w = tuple(int(x) for x in m.group(2).split("."))
        op = m.group(1) or "="
        if not {">=": v >= w, "<=": v <= w, ">": v > w, "<": v < w, "=": v == w}[op]:
            return False
    return True


def prebuilt_library(lineage: dict, webllm_version: str | None) -> dict | None:
    """The prebuilt library `add` recorded (personalize.json `prebuilt_library`, with the other library
    directories it is also in) that the page's web-llm version loads: {"library", "url", ...} or None."""
    rec = lineage.get("prebuilt_library") or lineage.get("library")
    if isinstance(rec, str):
        rec = {"url": rec}
    if not isinstance(rec, dict) or not (rec.get("url") or isinstance(rec.get("library"), str)):
        return None
    candidates = [rec] + [c for c in rec.get("also_in") or [] if isinstance(c, dict)]
    fits = [c for c in candidates if _in_range(webllm_version, c.get("webllm_range"))]
    return {**rec, **fits[0]} if fits else None


def library_url(library: dict | None, base_url: str, prebuilt_dir: Path | None) -> str | None:
    """Its URL; a file of the same relative path (e.g. v0_2_48/X.wasm) or name under `prebuilt_dir` wins
    (served at /prebuilt/), so the page works offline."""
    if not library:
        return None
    url = library.get("url")
    rel = library.get("library") if isinstance(library.get("library"), str) else None
    name = Path(rel or url or "").name
    if prebuilt_dir is not None and name.endswith(".wasm"):
        root = Path(prebuilt_dir).resolve()
        exact = (root / rel).resolve() if rel else None
        if exact is not None and exact.is_file() and exact.is_relative_to(root):
            return f"{base_url}/prebuilt/{exact.relative_to(root).as_posix()}"
        hits = sorted(p for p in root.rglob("*.wasm") if p.name == name and p.is_file())
        if hits:
            return f"{base_url}/prebuilt/{hits[0].relative_to(root).as_posix()}"
    return url


def _library_context(library: dict | None, chat: dict) -> int:
    """The KV cache size for WebLLM: the context MLC's own records use with that library."""
    if library and isinstance(library.get("context_window_size"), int) and library["context_window_size"] > 0:
        return library["context_window_size"]
    return min(int(chat.get("context_window_size") or 4096), 4096)  # MLC's WebGPU libraries are ctx4k




def _sha256_of(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1024)  # keyed by size and mtime, so a changed file is hashed again
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def etag_matches(if_none_match: str | None, quoted: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"x" matches "x"."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or quoted in [t[2:] if t.startswith("W/") else t for t in tags]


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """'bytes=a-b' -> (start, end inclusive); None = serve everything; 'unsatisfiable' = 416."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not m or (not m.group(1) and not m.group(2)):
        return None  # absent, malformed or multi-range: RFC 9110 lets us ignore it and send 200
    if not m.group(1):  # suffix range: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class ShareHandler(BaseHTTPRequestHandler):
    index: ArtifactIndex
    page: PageOptions = PageOptions()
    protocol_version = "HTTP/1.1"
    server_version = "personalize-serve"

    def log_message(self, fmt: str, *args: Any) -> None:
        if os.environ.get("PERSONALIZE_SERVE_LOG"):
            super().log_message(fmt, *args)

    def _headers(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for key, value in {**CORS_HEADERS, **headers}.items():
            self.send_header(key, str(value))
        self.end_headers()

    def _error(self, status: int, message: str) -> None:
        body = (json.dumps({"error": message}) + "\n").encode()
        self._headers(status, {"Content-Type": "application/json", "Content-Length": len(body)})
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self) -> None:  # CORS preflight
        self._headers(204, {"Content-Length": 0})

    def do_HEAD(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            self._route()
        except FileNotFoundError:  # removed between lookup and open (rm, a replace): nothing was sent yet
            self._error(404, f"not found: {unquote(urlsplit(self.path).path)}")

    def _route(self) -> None:
        raw = urlsplit(self.path).path
        path = unquote(raw)
        if path in ("/", "/index.html"):
            return self._page()
        if path == "/api/models":
            return self._listing()
        m = RESOLVE.match(path)
        if m is not None:
            found = self.index.lookup(m["repo"], m["rev"], m["file"])
            if found is None:
                return self._error(404, f"not found: {path}")
            file, rec, commit = found
            etag = rec["sha256"] if rec else _sha256_of(file)
            return self._file(file, etag, m["file"], {"X-Repo-Commit": commit})
        m = LIB_FILE.match(path)
        if m is not None and self.index.libs_dir is not None:
            file = (self.index.libs_dir / m["file"]).resolve()
            if file.is_file() and file.is_relative_to(self.index.libs_dir.resolve()):
                return self._file(file, _sha256_of(file), m["file"])
        m = STATIC.match(path)
        if m is not None:
            root = self.page.webllm_dir if m["root"] == "vendor/web-llm" else self.page.prebuilt_dir
            if root is not None and ".." not in m["file"].split("/"):
                file = (Path(root) / m["file"]).resolve()
                if file.is_file() and file.is_relative_to(Path(root).resolve()):
                    return self._file(file, _sha256_of(file), m["file"])
        return self._error(404, f"not found: {path}")

    def _base_url(self) -> str:
        host = self.headers.get("host") or "%s:%d" % self.server.server_address[:2]
        return f"http://{host}"

    def _send(self, body: bytes, content_type: str) -> None:
        self._headers(200, {"Content-Type": content_type, "Content-Length": len(body), "Cache-Control": "no-cache"})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _page(self) -> None:
        self._send(PAGE_FILE.read_bytes(), CONTENT_TYPES[".html"])

    def _listing(self) -> None:
        doc = {"webllm_url": self.page.module_url(), "webllm_version": webllm_version_of(self.page),
               "models": self.index.models(self._base_url(), self.page)}
        self._send((json.dumps(doc, indent=2) + "\n").encode(), "application/json")

    def _file(self, file: Path, etag: str, name: str, extra: dict | None = None) -> None:
        size = file.stat().st_size
        quoted = f'"{etag}"'
        base = {**(extra or {}), "ETag": quoted, "Accept-Ranges": "bytes", "Cache-Control": "no-cache",
                "Content-Type": CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")}
        if etag_matches(self.headers.get("If-None-Match"), quoted):
            return self._headers(304, {**base, "Content-Length": 0})
        wanted = parse_range(self.headers.get("Range", ""), size)
        if_range = self.headers.get("If-Range")
        if wanted is not None and if_range and if_range.strip() != quoted:
            wanted = None  # the client's copy is of another version: send the whole file
        if wanted == "unsatisfiable":
            return self._headers(416, {**base, "Content-Range": f"bytes */{size}", "Content-Length": 0})
        start, end, status = 0, size - 1, 200
        if isinstance(wanted, tuple):
            (start, end), status = wanted, 206
            base["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        self._headers(status, {**base, "Content-Length": length})
        if self.command == "HEAD" or length == 0:
            return
        try:
            f = open(file, "rb")
        except FileNotFoundError:  # headers are out: end the connection rather than send a wrong body
            self.close_connection = True
            return
        with f:
            f.seek(start)
            remaining = length
            try:
                while remaining:
                    block = f.read(min(CHUNK, remaining))
                    if not block:
                        break
                    self.wfile.write(block)
                    remaining -= len(block)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True  # the client went away or stalled (e.g. it only wanted the start)


class PooledHTTPServer(HTTPServer):
    """HTTPServer whose connections run on a fixed pool of worker threads (not a thread per connection)."""

    def __init__(self, address, handler, *, workers: int = WORKERS, backlog: int = BACKLOG):
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="personalize-serve")
        self._slots = threading.BoundedSemaphore(workers + backlog)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # overloaded: refuse now rather than queue without end
            self.shutdown_request(request)
            return
        self.pool.submit(self._work, request, client_address)

    def _work(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one bad connection never stops the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(index: ArtifactIndex, host: str = "127.0.0.1", port: int = 8765, *, page: PageOptions | None = None,
                workers: int = WORKERS, timeout: float = TIMEOUT_S) -> PooledHTTPServer:
    handler = type("BoundShareHandler", (ShareHandler,),
                   {"index": index, "timeout": timeout, "page": page or PageOptions()})
    return PooledHTTPServer((host, port), handler, workers=workers)


__all__ = ["ArtifactIndex", "PageOptions", "PooledHTTPServer", "ShareHandler", "etag_matches", "make_server",
           "parse_range", "library_url", "prebuilt_library", "CORS_HEADERS", "WEBLLM_CDN", "WEBLLM_VERSION"]
