"""What the user pointed at: a full HF model directory, a PEFT adapter directory, or hf://ORG/NAME."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from artifacts.format import TOKENIZER_FILES  # the one list (MLC gen_config's six first)

from .config_check import check_config
from .errors import IngestError
from .tokenizer_check import check_tokenizer_files
from .weights import WeightReader

SourceKind = Literal["model", "adapter"]



def detect_kind(path: Path) -> SourceKind:
    if not path.exists():
        raise IngestError(f"{path} does not exist", path=path, hint="check the path")
    if not path.is_dir():
        raise IngestError(f"{path} is not a directory", path=path,
                          hint="pass the directory that holds config.json (or adapter_config.json)")
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise IngestError("config.json is missing", path=path / "config.json",
                      hint="point at a directory written by save_pretrained (config.json + weights), "
                           "or at a PEFT adapter directory (adapter_config.json)")


def read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise IngestError(f"{path.name} is missing", path=path, hint="save the model again with save_pretrained") from exc
    except (ValueError, RecursionError) as exc:
        raise IngestError(f"{path.name} is not valid JSON ({exc})", path=path,
                          hint="repair or re-save the file") from exc
    if not isinstance(doc, dict):
        raise IngestError(f"{path.name} is not a JSON object", path=path, hint="repair or re-save the file")
    return doc


def config_sha256(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class ModelDir:
    """A full model: its config, lazily readable weights and tokenizer files."""

    path: Path
    config: dict
    weights: WeightReader

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def tokenizer_files(self) -> list[Path]:
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]


def open_model_dir(path: Path) -> ModelDir:
    path = Path(path)
    if detect_kind(path) != "model":
        raise IngestError(f"{path} is a PEFT adapter, not a full model", path=path,
                          hint="pass it as the SOURCE of `personalize add` with --base")
    config = read_json(path / "config.json")
    # A multimodal config keeps its language model under text_config; that layout is not supported.
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise IngestError("config.json has no model_type" if "model_type" not in config else
                          f"config.json: model_type must be a name, got {config['model_type']!r}",
                          path=path / "config.json", hint="use the config.json written by transformers")
    weights = WeightReader(path)
    # Untrusted sizes are checked against the tensors present before anything is sized from them.
    check_config(config, path / "config.json", {n: i.shape for n, i in weights.tensors.items()})
    check_tokenizer_files(path)
    return ModelDir(path=path, config=config, weights=weights)
