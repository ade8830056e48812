"""`personalize serve`: every registry artifact over HTTP in the Hub's `/{repo}/resolve/{rev}/{file}` layout.

Repos are `local/<name>` for every artifact, plus the repo id each one was last pushed to, so WebLLM's
`cleanModelUrl` (which appends `/resolve/main/`) and the MLC apps can fetch from it unchanged. Only
files listed in the artifact's personalize.json (and personalize.json itself) are served, so no
request can reach outside the artifact. GET and HEAD, single byte ranges (206 / 416), ETag = the
sha256 from personalize.json (If-None-Match, strong or weak `W/"..."` -> 304), CORS for browsers
(WebLLM fetches cross-origin). Connections are handled by a bounded worker pool and each one has a
socket timeout, so slow or half-sent requests cannot pile up threads or hold a worker forever.
`/libs/<file>` serves compiled libraries (e.g. a WebGPU .wasm) from the registry's libs/ directory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from artifacts import Artifact, sha256_file
from artifacts.format import LINEAGE_JSON
from personalize_errors import UserError
from registry.store import read_published

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag, X-Repo-Commit",
    "Access-Control-Max-Age": "86400",
}
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
LIB_FILE = re.compile(r"^/libs/(?P<file>[A-Za-z0-9][A-Za-z0-9._-]*)$")
CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain",
                 ".wasm": "application/wasm", ".jinja": "text/plain; charset=utf-8"}
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

    def revisions(self, name: str) -> set[str]:
        rec = read_published(self.home).get(name) or {}
        return {"main"} | {r for r in (rec.get("revision"), rec.get("commit")) if r}

    def lookup(self, repo: str, rev: str, file: str) -> tuple[Path, dict | None, str] | None:
        """(path on disk, lineage record or None for personalize.json, commit id) or None if not served."""
        name = self.repos().get(repo)
        if name is None or rev not in self.revisions(name):
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
        pushed = read_published(self.home).get(name) or {}
        commit = pushed.get("commit") if repo == pushed.get("repo_id") else None
        return path, (files.get(file) if file != LINEAGE_JSON else None), commit or revision


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
        if path in ("/", "/api/models"):
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
        return self._error(404, f"not found: {path}")

    def _listing(self) -> None:
        repos = self.index.repos()
        host = self.headers.get("host") or "%s:%d" % self.server.server_address[:2]
        doc = [{"id": repo, "artifact": name, "url": f"http://{host}/{repo}"} for repo, name in sorted(repos.items())]
        body = (json.dumps(doc, indent=2) + "\n").encode()
        self._headers(200, {"Content-Type": "application/json", "Content-Length": len(body)})
        if self.command != "HEAD":
            self.wfile.write(body)

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


def make_server(index: ArtifactIndex, host: str = "127.0.0.1", port: int = 8765, *, workers: int = WORKERS,
                timeout: float = TIMEOUT_S) -> PooledHTTPServer:
    handler = type("BoundShareHandler", (ShareHandler,), {"index": index, "timeout": timeout})
    return PooledHTTPServer((host, port), handler, workers=workers)


__all__ = ["ArtifactIndex", "PooledHTTPServer", "ShareHandler", "etag_matches", "make_server", "parse_range",
           "CORS_HEADERS"]
