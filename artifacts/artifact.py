"""`Artifact(path)`: the one reader of an artifact directory (in the spirit of gguf-py's GGUFReader).

Every command that looks at an artifact (runtime check, share, push, serve, store, eval, adapter
reuse, the model card) reads it through this class, so each file is parsed in one place, by one
rule, with one typed error naming the file:

    art = Artifact(path)
    art.chat_config          # mlc-chat-config.json, validated           (ChatConfigError)
    art.conversation         # its conv_template as a Conversation       (ConvTemplateError)
    art.lineage              # personalize.json                          (LineageError)
    art.lineage_or_none()    # None for a legacy MLC directory without personalize.json
    art.tensor_cache         # TensorCache: records, load(name), items(), param_bytes, shard_files
    art.render_card(repo_id) # README.md text, always with this directory (so the VRAM estimate is kept)
    art.record(lineage)      # rewrite README.md + personalize.json for changed lineage (e.g. eval)

Properties are read lazily and cached: make a new Artifact to see later changes on disk.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

from .chat_config import read_chat_config
from .deploy import VramEstimate, estimate_vram
from .conversation import Conversation
from .errors import ArtifactError, ConvTemplateError
from .files import sha256_file, write_text_atomic
from .format import LINEAGE_JSON, MLC_CHAT_CONFIG_JSON, MODEL_CARD, TENSOR_CACHE_JSON
from .lineage import read_lineage, write_lineage
from .tensor_cache import TensorCache


class Artifact:
    """An MLC weight directory written by personalize (or a legacy one without lineage)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ArtifactError(f"no artifact directory at {self.path}", path=self.path,
                                hint="pass an artifact directory or a registry name (`personalize list`)")

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r})"

    @staticmethod
    def looks_like(path: Path | str) -> bool:
        """True if `path` is a directory holding mlc-chat-config.json (cheap, reads nothing)."""
        return (Path(path) / MLC_CHAT_CONFIG_JSON).is_file()

    # -- the files ----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def chat_config_path(self) -> Path:
        return self.path / MLC_CHAT_CONFIG_JSON

    @property
    def lineage_path(self) -> Path:
        return self.path / LINEAGE_JSON

    @property
    def tensor_cache_path(self) -> Path:
        return self.path / TENSOR_CACHE_JSON

    @property
    def card_path(self) -> Path:
        return self.path / MODEL_CARD

    @cached_property
    def chat_config(self) -> dict[str, Any]:
        """mlc-chat-config.json: a JSON object with model_type, quantization and a conversation object."""
        return read_chat_config(self.path)

    @cached_property
    def conversation(self) -> Conversation:
        """The chat config's conv_template as a Conversation (the one prompt renderer)."""
        try:
            return Conversation.from_json(self.chat_config.get("conv_template"))
        except ConvTemplateError as exc:
            raise ConvTemplateError(f"{MLC_CHAT_CONFIG_JSON}: {exc.message}", path=self.chat_config_path,
                                    hint=exc.hint) from None

    @cached_property
    def lineage(self) -> dict[str, Any]:
        """personalize.json; LineageError if missing (not written by personalize) or malformed."""
        return read_lineage(self.path)

    def lineage_or_none(self) -> dict[str, Any] | None:
        """personalize.json, or None when the directory has none (a plain MLC weight directory)."""
        if not self.lineage_path.exists():
            return None
        return self.lineage

    @cached_property
    def tensor_cache(self) -> TensorCache:
        return TensorCache(self.path)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The lineage's {relative path: {"sha256", "size"}} map ({} when it has none)."""
        files = self.lineage.get("files")
        return files if isinstance(files, dict) else {}

    def sha256(self, name: str) -> str:
        """sha256 of one file of the artifact, recomputed from disk."""
        return sha256_file(self.path / name)

    @property
    def revision(self) -> str:
        """A content id of this artifact: sha1 of personalize.json (it names every file's sha256)."""
        return hashlib.sha1(self.lineage_path.read_bytes()).hexdigest()

    # -- derived --------------------------------------------------------------------------------
    def vram(self) -> VramEstimate:
        """Device memory to run it (weights + KV cache + activations); see artifacts/deploy.py."""
        return estimate_vram(self.chat_config, self.tensor_cache.doc)

    def render_card(self, repo_id: str | None = None, *, lineage: dict[str, Any] | None = None) -> str:
        """README.md text for this directory (optionally for a Hub repo id, or for a changed lineage)."""
        from .model_card import render_model_card  # noqa: PLC0415 - imports huggingface_hub

        return render_model_card(self.lineage if lineage is None else lineage, self.chat_config,
                                 repo_id=repo_id, artifact_dir=self.path)

    def record(self, lineage: dict[str, Any]) -> None:
        """Store a changed lineage: re-render README.md from it, then write personalize.json with the
        card's new hash (each file replaced atomically)."""
        write_text_atomic(self.card_path, self.render_card(lineage=lineage))
        files = lineage.setdefault("files", {})
        files[MODEL_CARD] = {"sha256": sha256_file(self.card_path), "size": self.card_path.stat().st_size}
        write_lineage(self.path, lineage)
        self.__dict__.pop("lineage", None)
