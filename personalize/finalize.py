"""The files that describe an artifact: lineage (personalize.json), the chat config and the model card.

`finalize_artifact` is the last step of every `add`; `record_eval` is the same step after
`personalize eval` reran the gate. Both render the card from the directory (so it sees the tensor
cache for the VRAM estimate) and write personalize.json with the hash of every other file last.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from artifacts import Artifact
from artifacts.chat_config import write_chat_config
from artifacts.lineage import file_map, write_lineage
from ingest.source import ModelDir, config_sha256

from .versions import tool_versions



def build_lineage(model: ModelDir, *, name: str | None, source_kind: str, source_path: Path,
                  model_type: str, quantization: str, scales: str, library_key: str, compiled_config: dict,
                  source_record: dict | None = None) -> dict[str, Any]:
    """personalize.json before the weights are written: where the artifact comes from, what it needs."""
    source = {"kind": source_kind, "path": str(Path(source_path).resolve()),
              "config_sha256": config_sha256(model.config),
              "weight_files": weight_file_stamps(model)}
    if source_record:
        source.update(source_record)
    return {
        "format": "personalize-artifact/1",
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model_type": model_type,
        "quantization": quantization,
        "quantization_options": {"scales": scales},
        "library_key": library_key,
        "compiled_config": compiled_config,
        "tools": tool_versions(),
    }


def quantization_options(lineage: dict) -> dict:
    """How an artifact's tensors were quantized beyond the scheme name (older artifacts: MLC's scales)."""
    return lineage.get("quantization_options") or {"scales": "mlc"}


def weight_file_stamps(model: ModelDir) -> dict[str, dict[str, int]]:
    """Size and mtime of every weight file: a cheap check that a base has not changed since."""
    out = {}
    for path in model.weights.files:
        st = path.stat()
        out[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def write_chat_files(out_dir: Path, built: tuple[dict, list[Path]]) -> dict:
    """mlc-chat-config.json and the tokenizer files it lists."""
    chat_config, tokenizer_files = built
    write_chat_config(out_dir, chat_config)
    for path in tokenizer_files:
        shutil.copyfile(path, out_dir / path.name)
    return chat_config


def finalize_artifact(out_dir: Path, lineage: dict, shard_hashes: dict[str, str]) -> None:
    """Model card + personalize.json with the sha256 and size of every other file (of a staged dir)."""
    artifact = Artifact(out_dir)
    # from the directory: the card's VRAM estimate reads the tensor cache (no Hub repo id yet)
    artifact.card_path.write_text(artifact.render_card(lineage=lineage))
    lineage["files"] = file_map(out_dir, known_sha256=shard_hashes)
    write_lineage(out_dir, lineage)


def record_eval(artifact_dir: Path, lineage: dict, result: dict) -> None:
    """Store rerun gate numbers in personalize.json and the model card of a finished artifact (live in
    the registry: each file is replaced atomically, the card first, then the lineage with its hash)."""
    lineage["eval"] = result
    Artifact(artifact_dir).record(lineage)

