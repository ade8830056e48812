"""The Hugging Face Hub side of the registry: push an artifact, pull a source, remember where it went.

Everything goes through `huggingface_hub.HfApi` (one client, keyword arguments). A push is one commit
that carries only the files whose remote sha256/size (LFS) or git blob id (small files) differ from
the artifact; when nothing differs no commit is made at all. Uploads go through `create_commit`, which
asks the Hub's LFS batch endpoint first, so objects an interrupted push already sent are not sent
again (the Xet path, used when `hf_xet` is installed, dedups the same way by chunk). After the commit
the remote tree is listed again and every file is checked against personalize.json.

The token comes from HF_TOKEN or the `hf auth login` cache (huggingface_hub's `get_token`); it is
handed to HfApi and never printed, logged or written anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from personalize_errors import UserError

LINEAGE_FILE = "personalize.json"
CARD_FILE = "README.md"
CHAT_CONFIG_FILE = "mlc-chat-config.json"
PUBLISHED_FILE = "published.json"  # in the registry home, not in the artifact (it would change its hashes)
DEFAULT_ENDPOINT = "https://huggingface.co"
HF_SCHEME = "hf://"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Remote files that belong to an artifact's layout; a stale one (e.g. a shard from an earlier, larger
# push) is deleted in the same commit so the repo mirrors the artifact. Other files are left alone.
MANAGED_PATTERNS = ("params_shard_*.bin", "tensor-cache-b16.json", "ndarray-cache-b16.json")
# What `add hf://` downloads from a source repo: top-level config, tokenizer and weight files only.
SOURCE_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken", ".txt", ".safetensors")
TORCH_WEIGHT_SUFFIXES = (".bin",)


class HubError(UserError):
    """A push, pull or share step failed; carries `path` (repo or file at fault) and `hint`."""


class HubAuthError(HubError):
    """No token, or the Hub rejected it."""


class HubVerifyError(HubError):
    """After a push the remote files do not match personalize.json."""


# --------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class PublishFile:
    """One file as it will be on the Hub: where its bytes come from and what they hash to."""

    path: str
    size: int
    sha256: str
    source: Path | bytes

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS / Xet files only
    blob_id: str


@dataclasses.dataclass
class PushResult:
    repo_id: str
    revision: str
    endpoint: str
    commit: str | None  # the new commit, None when nothing had changed
    head: str  # the revision's commit after the push
    uploaded: list[str]
    unchanged: list[str]
    deleted: list[str]
    files: list[dict]  # remote path, size, sha256 after the push (all checked)

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["url"] = self.url
        return doc


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a small (non-LFS) file, which is what the Hub reports for it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise HubError(f"invalid Hub repo id {repo_id!r}", hint="use ORG/NAME, e.g. alice/smollm2-chat-q4f16_1-MLC")
    return repo_id


# --------------------------------------------------------------------------------------- the artifact side
def read_lineage(artifact_dir: Path) -> dict:
    path = Path(artifact_dir) / LINEAGE_FILE
    try:
        lineage = json.loads(path.read_text())
    except FileNotFoundError:
        raise HubError("artifact has no personalize.json", path=path,
                       hint="push a directory written by `personalize add`") from None
    except ValueError as exc:
        raise HubError(f"personalize.json is not valid JSON: {exc}", path=path,
                       hint="run `personalize verify` and re-create the artifact") from None
    if not isinstance(lineage.get("files"), dict) or not lineage["files"]:
        raise HubError("personalize.json lists no files", path=path,
                       hint="re-create the artifact with `personalize add`")
    return lineage


def _render_card(lineage: dict, artifact_dir: Path, repo_id: str) -> bytes:
    """The model card re-rendered for `repo_id`, from the artifact directory (keeps the VRAM estimate)."""
    from artifacts import Artifact

    return Artifact(artifact_dir).render_card(repo_id, lineage=lineage).encode()


def _lineage_bytes(lineage: dict) -> bytes:
    """Serialize lineage exactly as the artifact writer does (falls back to indent=2 JSON)."""
    try:
        from artifacts.lineage import write_lineage
    except ImportError:
        return (json.dumps(lineage, indent=2) + "\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        write_lineage(Path(tmp), lineage)
        return (Path(tmp) / LINEAGE_FILE).read_bytes()


def publish_view(artifact_dir: Path, repo_id: str | None = None) -> tuple[dict[str, PublishFile], dict]:
    """The files a push sends, and the lineage that describes them.

    Identical to the artifact, except that the model card is re-rendered for `repo_id` (usage lines
    name the repo); then the pushed personalize.json records the new card's hash, so the published
    copy verifies on its own. The local artifact is never modified.
    """
    artifact_dir = Path(artifact_dir)
    lineage = read_lineage(artifact_dir)
    view: dict[str, PublishFile] = {}
    for rel, rec in sorted(lineage["files"].items()):
        path = artifact_dir / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise HubError(f"{rel} is listed in personalize.json but missing", path=path,
                           hint="run `personalize verify` and re-create the artifact") from None
        if size != int(rec["size"]):
            raise HubError(f"{rel} has {size} bytes, personalize.json says {rec['size']}", path=path,
                           hint="the artifact changed after it was written; run `personalize verify`")
        view[rel] = PublishFile(rel, size, rec["sha256"], path)

    card = _render_card(lineage, artifact_dir, repo_id) if repo_id and CARD_FILE in view else None
    if card is not None and sha256_bytes(card) != view[CARD_FILE].sha256:
        lineage = json.loads(json.dumps(lineage))
        lineage["files"][CARD_FILE] = {**lineage["files"][CARD_FILE], "sha256": sha256_bytes(card),
                                       "size": len(card)}
        view[CARD_FILE] = PublishFile(CARD_FILE, len(card), sha256_bytes(card), card)
        data = _lineage_bytes(lineage)
    else:
        data = (artifact_dir / LINEAGE_FILE).read_bytes()
    view[LINEAGE_FILE] = PublishFile(LINEAGE_FILE, len(data), sha256_bytes(data), data)
    return view, lineage


# --------------------------------------------------------------------------------------- the Hub side
def _hf():
    import huggingface_hub

    return huggingface_hub


def resolve_token(token: str | None = None) -> str:
    token = token or _hf().get_token()
    if not token:
        raise HubAuthError("no Hugging Face token found",
                           hint="set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                                "or run `hf auth login`")
    return token


def make_api(token: str | None = None, endpoint: str | None = None):
    return _hf().HfApi(endpoint=endpoint, token=token)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _translate(exc: BaseException, repo_id: str, endpoint: str) -> HubError | None:
    """A huggingface_hub / transport exception as one of ours, or None if it is not one we know."""
    from huggingface_hub import errors as hf_errors

    try:
        import httpx2 as transport
    except ImportError:  # older huggingface_hub (httpx / requests)
        transport = None
    if transport is not None and isinstance(exc, transport.TransportError):
        return HubError(f"cannot reach the Hub at {endpoint}: {type(exc).__name__}", path=endpoint,
                        hint="check the network connection (and HF_ENDPOINT if you set it), then run the "
                             "same command again: finished uploads are not repeated")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubError(f"revision not found in {repo_id}", path=repo_id,
                        hint="check the branch, tag or commit after '@'")
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAuthError(f"{repo_id} is gated", path=repo_id,
                            hint="accept its terms on the Hub, then set HF_TOKEN to a token of that account")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return HubError(f"repository {repo_id} not found", path=repo_id,
                        hint="check the repo id; for a private repo set HF_TOKEN to a token that can read it")
    status = _status(exc)
    if status == 401:
        return HubAuthError("the Hugging Face Hub rejected the token (401 Unauthorized)", path=endpoint,
                            hint="set HF_TOKEN to a valid write token (https://huggingface.co/settings/tokens) "
                                 "or run `hf auth login`")
    if status == 403:
        return HubAuthError(f"the token may not write to {repo_id} (403 Forbidden)", path=repo_id,
                            hint="use a token with write access to that user or organization")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HubError(f"the Hub refused the request: {first}", path=repo_id,
                        hint="run the same command again; finished uploads are not repeated")
    return None


def _call(fn: Callable[[], Any], repo_id: str, endpoint: str) -> Any:
    try:
        return fn()
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below or re-raised untouched
        # huggingface_hub wraps upload failures ("Error while uploading 'x'") around the HTTP error.
        cause: BaseException | None = exc
        while cause is not None:
            ours = _translate(cause, repo_id, endpoint)
            if ours is not None:
                if cause is not exc:
                    ours = type(ours)(f"{str(exc).strip().rstrip('.')}: {ours}", path=ours.path, hint=ours.hint)
                raise ours from exc
            cause = cause.__cause__ or cause.__context__
        raise


def list_remote_files(api, repo_id: str, revision: str) -> dict[str, RemoteFile]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for item in api.list_repo_tree(repo_id, recursive=True, revision=revision):
        if isinstance(item, RepoFile):
            sha = item.lfs.sha256 if item.lfs is not None else None
            out[item.path] = RemoteFile(item.path, int(item.size), sha, item.blob_id)
    return out


def same_content(local: PublishFile, remote: RemoteFile | None) -> bool:
    if remote is None or remote.size != local.size:
        return False
    if remote.sha256 is not None:
        return remote.sha256 == local.sha256
    # A small file stored in git: the Hub only tells us its git blob id.
    return remote.blob_id == git_blob_sha1(local.read())


def plan_push(view: dict[str, PublishFile], remote: dict[str, RemoteFile]) -> tuple[list[str], list[str], list[str]]:
    """(to upload, unchanged, stale remote files to delete)."""
    upload = [p for p in sorted(view) if not same_content(view[p], remote.get(p))]
    unchanged = [p for p in sorted(view) if p not in upload]
    stale = [p for p in sorted(remote) if p not in view and any(fnmatch.fnmatch(p, pat) for pat in MANAGED_PATTERNS)]
    return upload, unchanged, stale


def check_remote(view: dict[str, PublishFile], remote: dict[str, RemoteFile], repo_id: str) -> list[dict]:
    """Every pushed file is on the Hub with the right size and hash; raise HubVerifyError otherwise."""
    problems = []
    for path, local in sorted(view.items()):
        r = remote.get(path)
        if r is None:
            problems.append(f"{path} is missing")
        elif r.size != local.size:
            problems.append(f"{path} has {r.size} bytes, expected {local.size}")
        elif not same_content(local, r):
            problems.append(f"{path} has different content (sha256 {r.sha256 or 'n/a'}, expected {local.sha256})")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HubVerifyError(f"the Hub copy does not match personalize.json: {'; '.join(problems[:3])}{more}",
                             path=repo_id, hint="run the push again; if it persists, check the repo on the Hub")
    return [{"path": p, "size": view[p].size, "sha256": view[p].sha256} for p in sorted(view)]


def push_artifact(artifact_dir: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                  message: str | None = None, token: str | None = None, endpoint: str | None = None,
                  log: Callable[[str], None] | None = None) -> PushResult:
    """Create the repo if needed and make `revision` hold exactly the artifact, in at most one commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    check_repo_id(repo_id)
    artifact_dir = Path(artifact_dir)
    revision = revision or "main"
    log = log or (lambda _msg: None)
    view, lineage = publish_view(artifact_dir, repo_id)
    api = make_api(resolve_token(token), endpoint)
    where = api.endpoint.rstrip("/")

    _call(lambda: api.whoami(), repo_id, where)  # fail fast, with one clear line, on a bad token
    _call(lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), repo_id, where)
    if revision != "main":
        _call(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), repo_id, where)

    remote = _call(lambda: list_remote_files(api, repo_id, revision), repo_id, where)
    upload, unchanged, stale = plan_push(view, remote)
    commit = None
    if upload or stale:
        sent = sum(view[p].size for p in upload)
        log(f"uploading {len(upload)} file(s), {sent / 2**20:.1f} MiB; {len(unchanged)} already on the Hub")
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=view[p].source) for p in upload]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        summary = message or f"personalize: {artifact_dir.name} ({lineage.get('quantization', '?')})"
        info = _call(lambda: api.create_commit(repo_id, operations=ops, commit_message=summary,
                                               revision=revision), repo_id, where)
        commit = info.oid
    else:
        log(f"nothing to upload: all {len(view)} files are already on the Hub")

    after = _call(lambda: list_remote_files(api, repo_id, commit or revision), repo_id, where)
    files = check_remote(view, after, repo_id)
    head = _call(lambda: api.model_info(repo_id, revision=revision).sha, repo_id, where)
    return PushResult(repo_id=repo_id, revision=revision, endpoint=where, commit=commit, head=head,
                      uploaded=upload, unchanged=unchanged, deleted=stale, files=files)


# --------------------------------------------------------------------------------------- add hf://
def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """'hf://ORG/NAME[@REVISION]' -> (repo_id, revision or None)."""
    body = spec[len(HF_SCHEME):] if spec.startswith(HF_SCHEME) else spec
    repo_id, _, revision = body.partition("@")
    check_repo_id(repo_id.strip("/"))
    return repo_id.strip("/"), (revision or None)


def source_files(names: list[str]) -> list[str]:
    """The files of a source repo that `add` needs: top-level configs, tokenizer, weights (safetensors first)."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n.endswith(SOURCE_SUFFIXES)]
    if not any(n.endswith(".safetensors") for n in top):
        wanted += [n for n in top if n.endswith(TORCH_WEIGHT_SUFFIXES)]
    return sorted(wanted)


def download_source(spec: str, *, token: str | None = None, endpoint: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Download `hf://ORG/NAME[@REVISION]` (only what `add` reads); return (local dir, commit sha).

    The revision is resolved to a commit first and the snapshot is taken at that commit, so the sha
    returned is exactly what was downloaded.
    """
    hf = _hf()
    repo_id, revision = parse_hf_spec(spec)
    api = make_api(token or hf.get_token(), endpoint)
    where = api.endpoint.rstrip("/")
    info = _call(lambda: api.model_info(repo_id, revision=revision), repo_id, where)
    names = [s.rfilename for s in (info.siblings or [])]
    wanted = source_files(names)
    if not any(n == "config.json" or n == "adapter_config.json" for n in wanted):
        raise HubError(f"{repo_id} has neither config.json nor adapter_config.json at its top level",
                       path=f"{where}/{repo_id}",
                       hint="point at a transformers model repo or a PEFT adapter repo")
    local = _call(lambda: hf.snapshot_download(repo_id, revision=info.sha, allow_patterns=wanted,
                                               cache_dir=cache_dir, endpoint=endpoint,
                                               token=api.token), repo_id, where)
    return Path(local), info.sha


# --------------------------------------------------------------------------------------- push records
def published_path(home: Path) -> Path:
    return Path(home) / PUBLISHED_FILE


def read_published(home: Path) -> dict[str, dict]:
    """{artifact name: {repo_id, revision, endpoint, commit, pushed_at}} of the last push of each."""
    try:
        doc = json.loads(published_path(home).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def last_push(home: Path, name: str) -> dict | None:
    return read_published(home).get(name)


def record_push(home: Path, name: str, result: PushResult) -> dict:
    """Remember where `name` was pushed (atomically), for `share` and `serve`."""
    records = read_published(home)
    records[name] = {"repo_id": result.repo_id, "revision": result.revision, "endpoint": result.endpoint,
                     "commit": result.head,
                     "pushed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = published_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".published-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return records[name]


def forget_push(home: Path, name: str) -> bool:
    """Drop the push record of `name` (for `rm`, so a new artifact of that name does not inherit it)."""
    records = read_published(home)
    if records.pop(name, None) is None:
        return False
    path = published_path(home)
    fd, tmp = tempfile.mkstemp(prefix=".published-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return True
