"""The local store: named artifacts under $PERSONALIZE_HOME (default ~/.cache/personalize).

Layout: `artifacts/<name>/` (one artifact each), `libs/` (compiled libraries), `.staging/` (temp
dirs that become artifacts by an atomic rename, so an interrupted run leaves nothing behind).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from personalize_errors import UserError

ARTIFACT_MARKER = "mlc-chat-config.json"
# A write into the staging dir failed for lack of room or rights: the user's problem, not a bug.
WRITE_FAILURES = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(UserError):
    """The local registry refuses a name or an entry."""


def default_home() -> Path:
    env = os.environ.get("PERSONALIZE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "personalize"


def is_artifact_dir(path: Path) -> bool:
    return path.is_dir() and (path / ARTIFACT_MARKER).is_file()


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

    def path(self, name: str) -> Path:
        check_name(name)
        return self.artifacts_dir / name

    def names(self) -> list[str]:
        if not self.artifacts_dir.is_dir():
            return []
        return sorted(p.name for p in self.artifacts_dir.iterdir() if is_artifact_dir(p))

    def entries(self) -> list[ArtifactEntry]:
        return [ArtifactEntry(n, self.artifacts_dir / n, read_lineage_quiet(self.artifacts_dir / n))
                for n in self.names()]

    def resolve(self, name_or_dir: str | os.PathLike) -> Path:
        """A registry name, or a path to an artifact directory."""
        text = str(name_or_dir)
        candidate = Path(text).expanduser()
        if is_artifact_dir(candidate):
            return candidate.resolve()
        if NAME_PATTERN.match(text) and is_artifact_dir(self.artifacts_dir / text):
            return self.artifacts_dir / text
        if candidate.exists():
            raise RegistryError(f"{text} is not an artifact directory (no {ARTIFACT_MARKER})", path=text,
                                hint="pass a directory written by `personalize add` or a registry name")
        raise RegistryError(f"no artifact named {text!r}", path=self.artifacts_dir,
                            hint="see `personalize list` for the names in the registry")

    def remove(self, name: str) -> Path:
        path = self.resolve_name(name)
        # Rename first so a crash mid-delete never leaves a half-deleted artifact that looks valid.
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix=f"rm-{name}-", dir=self.staging_dir))
        os.replace(path, doomed / name)
        shutil.rmtree(doomed, ignore_errors=True)
        return path

    def resolve_name(self, name: str) -> Path:
        path = self.path(name)
        if not is_artifact_dir(path):
            raise RegistryError(f"no artifact named {name!r}", path=self.artifacts_dir,
                                hint="see `personalize list` for the names in the registry")
        return path

    @contextmanager
    def staging(self, destination: Path, overwrite: bool = False) -> Iterator[Path]:
        """Yield a temp dir next to `destination`; on success rename it into place, else delete it."""
        yield from _staged(destination, overwrite)


def _staged(destination: Path, overwrite: bool) -> Iterator[Path]:
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise RegistryError(f"{destination} already exists", path=destination,
                            hint="choose another --name/--output, or pass --force to replace it")
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create {parent}: {exc.strerror}", path=parent,
                            hint="choose a writable output location") from exc
    # The temp dir lives in the same directory as the destination so the final rename is atomic.
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=parent))
    except OSError as exc:
        raise RegistryError(f"cannot write to {parent}: {exc.strerror}", path=parent,
                            hint="choose a writable output location with free space") from exc
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; an artifact is as readable as any new dir
    try:
        yield tmp
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=parent))
            os.replace(destination, old / "x")
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


staged_directory = contextmanager(_staged)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"invalid artifact name {name!r}", hint="use letters, digits, '.', '_' and '-' only")
    return name


def read_lineage_quiet(path: Path) -> dict:
    try:
        return json.loads((path / "personalize.json").read_text())
    except (OSError, ValueError):
        return {}
