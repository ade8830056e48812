"""Push an artifact to the Hugging Face Hub, then check the Hub's copy against personalize.json.

A push is one `create_commit` that offers every file of the artifact (plus deletions of stale shards);
huggingface_hub itself drops the files whose remote blob id (small files) or sha256 (LFS) already
match and makes no commit at all when nothing changed. Uploads ask the Hub's LFS batch endpoint
first, so objects an interrupted push already sent are not sent again (the Xet path, used when
`hf_xet` is installed, dedups the same way by chunk). What we add: the model card re-rendered for the
repo, and after the commit the remote tree listed again and every file checked against
personalize.json (size and sha256, or the git blob id of small files).

Where an artifact was pushed is recorded by the local store (registry.store.record_push).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable

from .client import DEFAULT_ENDPOINT, HubAuthError, HubError, check_repo_id, hub_call, make_api, resolve_token

LINEAGE_FILE = "personalize.json"
CARD_FILE = "README.md"
# Remote files that belong to an artifact's layout; a stale one (e.g. a shard from an earlier, larger
# push) is deleted in the same commit so the repo mirrors the artifact. Other files are left alone.
MANAGED_PATTERNS = ("params_shard_*.bin", "tensor-cache-b16.json", "ndarray-cache-b16.json")

__all__ = ["DEFAULT_ENDPOINT", "HubAuthError", "HubError", "HubVerifyError", "PushResult", "check_repo_id",
           "publish_view", "push_artifact", "read_lineage"]


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

    def record(self) -> dict:
        """What the local store remembers of this push (registry.store.record_push)."""
        return {"repo_id": self.repo_id, "revision": self.revision, "endpoint": self.endpoint, "commit": self.head}

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["url"] = self.url
        return doc


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------- the artifact side
def read_lineage(artifact_dir: Path) -> dict:
    """personalize.json of a pushable artifact (through artifacts.Artifact); it must list the files."""
    from artifacts import Artifact

    art = Artifact(artifact_dir)
    lineage = art.lineage
    if not isinstance(lineage.get("files"), dict) or not lineage["files"]:
        raise HubError("personalize.json lists no files", path=art.lineage_path,
                       hint="re-create the artifact with `personalize add`")
    return lineage


def _render_card(lineage: dict, artifact_dir: Path, repo_id: str) -> bytes:
    """The model card re-rendered for `repo_id`, from the artifact directory (keeps the VRAM estimate)."""
    from artifacts import Artifact

    return Artifact(artifact_dir).render_card(repo_id, lineage=lineage).encode()


def _lineage_bytes(lineage: dict) -> bytes:
    """Serialize lineage exactly as the artifact writer does."""
    from artifacts.lineage import write_lineage

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
    from huggingface_hub.utils.sha import git_hash

    return remote.blob_id == git_hash(local.read())


def stale_files(view: dict[str, PublishFile], remote: dict[str, RemoteFile]) -> list[str]:
    """Remote files of the artifact layout that the artifact no longer has (an earlier push's extra shards)."""
    return [p for p in sorted(remote) if p not in view and any(fnmatch.fnmatch(p, pat) for pat in MANAGED_PATTERNS)]


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

    def call(fn):
        return hub_call(fn, repo_id, where)

    call(lambda: api.whoami())  # fail fast, with one clear line, on a bad token
    call(lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
    if revision != "main":
        call(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))

    before_head = call(lambda: api.repo_info(repo_id, revision=revision).sha)
    before = call(lambda: list_remote_files(api, repo_id, revision))
    stale = stale_files(view, before)
    # Every file is offered; create_commit drops the unchanged ones and skips an empty commit.
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=view[p].source) for p in sorted(view)]
    ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
    summary = message or f"personalize: {artifact_dir.name} ({lineage.get('quantization', '?')})"
    head = call(lambda: api.create_commit(repo_id, operations=ops, commit_message=summary, revision=revision)).oid

    after = call(lambda: list_remote_files(api, repo_id, head))
    files = check_remote(view, after, repo_id)
    uploaded = [p for p in sorted(view) if before.get(p) != after.get(p)]
    unchanged = [p for p in sorted(view) if p not in uploaded]
    commit = head if head != before_head else None
    if commit:
        sent = sum(view[p].size for p in uploaded)
        log(f"uploaded {len(uploaded)} file(s), {sent / 2**20:.1f} MiB; {len(unchanged)} were already on the Hub")
    else:
        log(f"nothing to upload: all {len(view)} files are already on the Hub")
    return PushResult(repo_id=repo_id, revision=revision, endpoint=where, commit=commit, head=head,
                      uploaded=uploaded if commit else [], unchanged=unchanged, deleted=stale if commit else [],
                      files=files)
