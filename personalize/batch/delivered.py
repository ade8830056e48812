"""The delivered log: $PERSONALIZE_HOME/batch-log.jsonl, one JSON object per line, append-only.

Every line names a delivery key, sha256 of (base content hash, source content hash, quantization,
options), the artifact `name`, and an event (a variant is done when its (key, name) was delivered):
  started    a job was handed to a worker (name it will write)
  delivered  converted, verified and gated (or gate off): the artifact is in the registry under `name`
  pushed     pushed to `push.repo_id` and checked there (only ever after `delivered`)
  failed     `stage` (convert | verify | gate | push | worker) failed with `error`
Lines are appended with one write(2) under the registry lock and fsync'd, so a kill at any moment
leaves whole lines (a torn last line is ignored when read). Only the process that runs `batch`
writes it; workers return results.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from registry.store import registry_lock

LOG_FILE = "batch-log.jsonl"
FORMAT = 1


def delivery_key(base_sha256: str, source_sha256: str, quantization: str, options: dict) -> str:
    doc = {"base": base_sha256, "source": source_sha256, "quantization": quantization, "options": options}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class KeyState:
    """What the log says about one key, folded over its events in order."""

    status: str = "new"  # new | started | delivered | failed
    name: str | None = None
    started_names: set[str] = field(default_factory=set)  # names a job of this key was told to write
    pushed: dict[str, dict] = field(default_factory=dict)  # repo_id -> last push record (with artifact_sha256)
    last: dict = field(default_factory=dict)  # the last delivered record (size, eval, seconds)
    failed: dict | None = None  # the last failure since the last delivery


class DeliveredLog:
    def __init__(self, home: Path | str):
        self.home = Path(home)
        self.path = self.home / LOG_FILE

    def append(self, event: str, key: str, **fields) -> dict:
        record = {"v": FORMAT, "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                  "event": event, "key": key, **fields}
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        with registry_lock(self.home):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def records(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill mid-write (never seen with one write(2), but cheap to allow)
            if isinstance(doc, dict) and "key" in doc and "event" in doc:
                out.append(doc)
        return out

    def states(self) -> dict[tuple[str, str], KeyState]:
        """(key, name) -> state: the same content delivered under two names is two artifacts."""
        states: dict[tuple[str, str], KeyState] = {}
        for rec in self.records():
            st = states.setdefault((rec["key"], rec.get("name")), KeyState())
            event = rec["event"]
            if event == "started":
                st.status, st.name = "started", rec.get("name")
                st.started_names.add(rec.get("name"))
            elif event == "delivered":
                st.status, st.name, st.failed, st.last = "delivered", rec.get("name"), None, rec
            elif event == "pushed":
                st.pushed[rec["push"]["repo_id"]] = rec["push"]
            elif event == "failed":
                st.failed = rec
                if rec.get("stage") != "push":  # a failed push leaves the artifact delivered
                    st.status = "failed"
        return states
