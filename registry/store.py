"""The local store: named artifacts under $PERSONALIZE_HOME (default ~/.cache/personalize).

Layout: `artifacts/<name>/` (one artifact each), `libs/` (compiled libraries), `published.json`
(where each artifact was last pushed), `.lock` (the one file lock every write takes).

An artifact is written into `.<name>.partial-<host>-<pid>-<start>-<random>` next to its destination
and renamed into place, so an interrupted run never leaves a half-written artifact under a name. The
partial dir's name records its writer (host, pid, process start time): the next write cleans the
partials of writers that are dead. Every change to `artifacts/` and `published.json` (the final
rename, rm, push records) happens under the lock, which the kernel releases when a process dies.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from personalize_errors import UserError

ARTIFACT_MARKER = "mlc-chat-config.json"
LINEAGE_FILE = "personalize.json"
PUBLISHED_FILE = "published.json"  # in the registry home, not in the artifact (it would change its hashes)
LOCK_FILE = ".lock"
# A write into the staging dir failed for lack of room or rights: the user's problem, not a bug.
WRITE_FAILURES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-)?[^/]*$")
OLD = re.compile(r"^\.(?P<name>.+)\.old-[^/]*$")
PAUSE_ENV = "PERSONALIZE_TEST_PAUSE_AT"  # tests only: stop at a named stage so a test can kill the process


class RegistryError(UserError):
    """The local registry refuses a name or an entry."""


def default_home() -> Path:
    env = os.environ.get("PERSONALIZE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "personalize"


def is_artifact_dir(path: Path) -> bool:
    return path.is_dir() and (path / ARTIFACT_MARKER).is_file()


def is_unfinished(path: Path) -> bool:
    """A staging or swap dir of a write (finished or not): never an artifact by itself."""
    return bool(PARTIAL.match(path.name) or OLD.match(path.name))


# --------------------------------------------------------------------------------------- the lock
_held: dict[str, list] = {}  # lock path -> [fd, depth]; flock is per open file, so nest within a process
_held_guard = threading.RLock()


@contextmanager
def registry_lock(home: Path | str | None = None) -> Iterator[None]:
    """The registry's one exclusive lock (fcntl.flock on $PERSONALIZE_HOME/.lock); re-entrant in a process."""
    home = Path(home) if home else default_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create {home}: {exc.strerror}", path=home,
                            hint="set PERSONALIZE_HOME to a writable directory") from exc
    key = str(home / LOCK_FILE)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held[key] = [fd, 1]
        try:
            yield
        finally:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                fd = _held.pop(key)[0]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


# --------------------------------------------------------------------------------------- writers
def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> int:
    """The process start time (clock ticks since boot), so a reused pid is not taken for the writer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _writer_alive(host: str | None, pid: str | None, start: str | None) -> bool:
    if host is None:  # an older, unlabelled partial: only ever seen after its writer died
        return False
    if host != _host_id():
        return True  # another machine's writer (shared disk): we cannot tell, so leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return int(start) == 0 or _start_ticks(int(pid)) in (0, int(start))


def live_writer(parent: Path, name: str) -> str | None:
    """'pid N' of a live process writing `name` in `parent`, or None."""
    for entry in _entries(parent):
        m = PARTIAL.match(entry.name)
        if m and m["name"] == name and _writer_alive(m["host"], m["pid"], m["start"]):
            return f"pid {m['pid']}"
    return None


def clean_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Remove partials of dead writers (of `name`, or of every name); restore an artifact a dead writer
    had moved aside mid-replace. Call under the registry lock. Returns what was removed."""
    removed = []
    for entry in _entries(parent):
        m = PARTIAL.match(entry.name) or OLD.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or not entry.is_dir():
            continue
        if m.re is PARTIAL and _writer_alive(m["host"], m["pid"], m["start"]):
            continue
        if m.re is OLD:  # swaps happen under the lock: this one's writer died between its two renames
            inner = entry / "x" if (entry / "x").is_dir() else entry  # older layout kept the artifact in x/
            if NAME_PATTERN.match(m["name"]) and not (parent / m["name"]).exists() and is_artifact_dir(inner):
                os.replace(inner, parent / m["name"])
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _entries(parent: Path) -> list[Path]:
    try:
        return [p for p in Path(parent).iterdir() if p.name.startswith(".")]
    except OSError:
        return []


def pause_point(stage: str) -> None:
    """Tests only: with PERSONALIZE_TEST_PAUSE_AT=<stage>, announce the stage on stderr and wait to be killed."""
    if os.environ.get(PAUSE_ENV) == stage:
        os.write(2, f"\npaused at {stage} (pid {os.getpid()})\n".encode())
        while True:
            time.sleep(60)


def check_replaceable(destination: Path, overwrite: bool) -> None:
    """`destination` may be written: it does not exist, or it is an artifact and `overwrite` is set."""
    if not (destination.exists() or destination.is_symlink()):
        return
    if not overwrite:
        raise RegistryError(f"{destination} already exists", path=destination,
                            hint="choose another --name/--output, or pass --force to replace it")
    if destination.is_symlink() or not destination.is_dir() or not (destination / LINEAGE_FILE).is_file():
        raise RegistryError(f"{destination} is not a personalize artifact (no {LINEAGE_FILE}); --force "
                            "only replaces artifacts", path=destination,
                            hint="choose another --output; personalize never deletes a directory it did not write")


@contextmanager
def staged_directory(destination: Path, overwrite: bool = False, *,
                     home: Path | str | None = None) -> Iterator[Path]:
    """Yield a temp dir next to `destination`; on success rename it into place, else delete it.

    Under the registry lock: dead writers' partials are cleaned first, and at the end the destination
    is checked again (another run may have finished meanwhile), so of two writers of one name without
    `overwrite` exactly one wins and the other gets "already exists".
    """
    destination = Path(destination)
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create {parent}: {exc.strerror}", path=parent,
                            hint="choose a writable output location") from exc
    home = Path(home) if home else default_home()
    with registry_lock(home):
        # In the registry every stale write is ours to clean; elsewhere only those of this destination.
        in_registry = parent.resolve() == (home / "artifacts").resolve()
        clean_stale(parent, None if in_registry else destination.name)
        check_replaceable(destination, overwrite)
        writer = None if overwrite else live_writer(parent, destination.name)
        if writer is not None:
            raise RegistryError(f"{destination} is being written by another personalize run ({writer})",
                                path=destination, hint="wait for it to finish, or choose another --name/--output")
        # Same directory as the destination, so the final rename is atomic; the name says who writes it.
        prefix = f".{destination.name}.partial-{_host_id()}-{os.getpid()}-{_start_ticks(os.getpid())}-"
        try:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError as exc:
            raise RegistryError(f"cannot write to {parent}: {exc.strerror}", path=parent,
                                hint="choose a writable output location with free space") from exc
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; an artifact is as readable as any new dir
    try:
        yield tmp
        pause_point("rename")
        with registry_lock(home):
            check_replaceable(destination, overwrite)
            if destination.exists():
                old = parent / f".{destination.name}.old-{os.getpid()}-{os.urandom(4).hex()}"
                os.replace(destination, old)
                pause_point("swap")
                os.replace(tmp, destination)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, destination)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in WRITE_FAILURES:
            raise RegistryError(f"cannot write {destination}: {exc.strerror}", path=destination,
                                hint="free some disk space or choose another --output; nothing was written"
                                ) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class ArtifactEntry:
    name: str
    path: Path
    lineage: dict

    def summary(self) -> dict:
        files = self.lineage.get("files", {})
        return {
            "name": self.name,
            "path": str(self.path),
            "model_type": self.lineage.get("model_type"),
            "quantization": self.lineage.get("quantization"),
            "library_key": self.lineage.get("library_key"),
            "source": (self.lineage.get("source") or {}).get("path"),
            "kind": (self.lineage.get("source") or {}).get("kind"),
            "size_bytes": sum(int(f.get("size", 0)) for f in files.values()),
            "created": self.lineage.get("created"),
        }


class Registry:
    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).expanduser() if home else default_home()

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def libs_dir(self) -> Path:
        return self.home / "libs"

    @property
    def staging_dir(self) -> Path:
        return self.home / ".staging"

    def lock(self):
        return registry_lock(self.home)

    def path(self, name: str) -> Path:
        check_name(name)
        return self.artifacts_dir / name

    def names(self) -> list[str]:
        """Finished artifacts only: partial and swap dirs start with '.', which no name may."""
        if not self.artifacts_dir.is_dir():
            return []
        self._recover_swaps()
        return sorted(p.name for p in self.artifacts_dir.iterdir() if NAME_PATTERN.match(p.name) and is_artifact_dir(p))

    def entries(self) -> list[ArtifactEntry]:
        return [ArtifactEntry(n, self.artifacts_dir / n, read_lineage_quiet(self.artifacts_dir / n))
                for n in self.names()]

    def resolve(self, name_or_dir: str | os.PathLike) -> Path:
        """A registry name, or a path to an artifact directory."""
        text = str(name_or_dir)
        candidate = Path(text).expanduser()
        if is_unfinished(candidate):
            raise RegistryError(f"{text} is an unfinished write, not an artifact", path=text,
                                hint="it is cleaned up by the next `personalize add` or `rm`; use the artifact's name")
        if is_artifact_dir(candidate):
            return candidate.resolve()
        if NAME_PATTERN.match(text) and is_artifact_dir(self.artifacts_dir / text):
            return self.artifacts_dir / text
        if NAME_PATTERN.match(text) and self._recover_swaps() and is_artifact_dir(self.artifacts_dir / text):
            return self.artifacts_dir / text
        if candidate.exists():
            raise RegistryError(f"{text} is not an artifact directory (no {ARTIFACT_MARKER})", path=text,
                                hint="pass a directory written by `personalize add` or a registry name")
        raise RegistryError(f"no artifact named {text!r}", path=self.artifacts_dir,
                            hint="see `personalize list` for the names in the registry")

    def _recover_swaps(self) -> bool:
        """A writer killed mid-replace left `.NAME.old-*` and no NAME: put the previous artifact back."""
        names = {m["name"] for m in map(OLD.match, (p.name for p in _entries(self.artifacts_dir))) if m}
        if not names:
            return False
        with self.lock():  # a live writer swaps under the lock, so what is still there now is a dead one's
            for name in names:
                clean_stale(self.artifacts_dir, name)
        return True

    def remove(self, name: str) -> Path:
        """Delete artifact `name`, its dead writers' partials and its push record, under the lock."""
        path = self.path(name)
        with self.lock():
            cleaned = clean_stale(self.artifacts_dir, name)
            writer = live_writer(self.artifacts_dir, name)
            if not is_artifact_dir(path):
                if cleaned:
                    forget_push(self.home, name)
                    return path
                more = f"; {name!r} is being written by {writer}" if writer else ""
                raise RegistryError(f"no artifact named {name!r}{more}", path=self.artifacts_dir,
                                    hint="see `personalize list` for the names in the registry")
            # Rename first so a crash mid-delete never leaves a half-deleted artifact that looks valid.
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            doomed = Path(tempfile.mkdtemp(prefix=f"rm-{name}-", dir=self.staging_dir))
            os.replace(path, doomed / name)
            forget_push(self.home, name)  # a later artifact of the same name must not inherit the record
            shutil.rmtree(doomed, ignore_errors=True)
        return path

    def resolve_name(self, name: str) -> Path:
        path = self.path(name)
        if not is_artifact_dir(path):
            raise RegistryError(f"no artifact named {name!r}", path=self.artifacts_dir,
                                hint="see `personalize list` for the names in the registry")
        return path

    def staging(self, destination: Path, overwrite: bool = False):
        """`staged_directory` under this registry's lock."""
        return staged_directory(destination, overwrite, home=self.home)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"invalid artifact name {name!r}", hint="use letters, digits, '.', '_' and '-' only")
    return name


def read_lineage_quiet(path: Path) -> dict:
    """personalize.json through artifacts.Artifact, or {} when it is missing or unreadable (for `list`)."""
    from artifacts import Artifact

    try:
        return Artifact(path).lineage
    except (UserError, OSError):
        return {}


# --------------------------------------------------------------------------------------- push records
def published_path(home: Path | str) -> Path:
    return Path(home) / PUBLISHED_FILE


def read_published(home: Path | str) -> dict[str, dict]:
    """{artifact name: {repo_id, revision, endpoint, commit, pushed_at}} of the last push of each."""
    try:
        doc = json.loads(published_path(home).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def last_push(home: Path | str, name: str) -> dict | None:
    return read_published(home).get(name)


def record_push(home: Path | str, name: str, record: dict) -> dict:
    """Remember where `name` was pushed ({repo_id, revision, endpoint, commit}), for `share` and `serve`."""
    record = {**record, "pushed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with registry_lock(home):  # read-modify-write: without the lock a concurrent push or rm is lost
        records = read_published(home)
        records[name] = record
        _write_published(home, records)
    return record


def forget_push(home: Path | str, name: str) -> bool:
    """Drop the push record of `name` (for `rm`, so a new artifact of that name does not inherit it)."""
    with registry_lock(home):
        records = read_published(home)
        if records.pop(name, None) is None:
            return False
        _write_published(home, records)
    return True


def _write_published(home: Path | str, records: dict) -> None:
    path = published_path(home)
    fd, tmp = tempfile.mkstemp(prefix=".published-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
