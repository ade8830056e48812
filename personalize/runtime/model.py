"""`personalize.load(...)`: an artifact on its library, with tokenizer and conversation template."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from artifacts import Artifact
from artifacts.format import TOKENIZER_JSON

from .check import check_artifact
from .errors import RuntimeUserError
from .sampling import sample


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" or "length"
    stats: dict[str, float] = field(default_factory=dict)


class Model:
    """An artifact loaded on its compiled library."""

    def __init__(self, artifact: Artifact, engine, lib_path: Path):
        self.artifact = artifact
        self.artifact_dir = artifact.path
        self.engine = engine
        self.chat_config = artifact.chat_config
        self.lib_path = lib_path
        self.conv = artifact.conversation
        self._tokenizer = None

    # --- tokenizer -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer  # noqa: PLC0415

            path = self.artifact.file(TOKENIZER_JSON)
            if not path.exists():
                raise RuntimeUserError(f"the artifact has no {TOKENIZER_JSON}", path=str(path),
                                       hint="copy the fine-tune's tokenizer.json into the artifact")
            self._tokenizer = Tokenizer.from_file(str(path))
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode_tokens(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- numerics --------------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Prefill logits for every position [len, vocab] (float32)."""
        return self.engine.logits(token_ids)

    def stop_token_ids(self) -> set[int]:
        ids = set(self.conv.stop_token_ids)
        eos = self.chat_config.get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        return ids

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.conv.prompt_token_ids(messages, self.encode)

    # --- generation ------------------------------------------------------------------------------
    def stream_tokens(self, prompt_ids: Sequence[int], max_tokens: int = 256, temperature: float = 0.0,
                      top_p: float = 1.0, seed: int | None = None, stats: dict | None = None) -> Iterator[int]:
        import time

        rng = np.random.default_rng(seed)
        stops = self.stop_token_ids()
        self.engine.reset()
        t0 = time.perf_counter()
        logits = self.engine.prefill(prompt_ids)
        t1 = time.perf_counter()
        n = 0
        if stats is not None:
            stats.update(prompt_tokens=len(prompt_ids), prefill_s=t1 - t0)
        while n < max_tokens:
            tok = sample(logits, temperature, top_p, rng)
            if tok in stops:
                if stats is not None:
                    stats["finish_reason"] = "stop"
                break
            n += 1
            yield tok
            if n >= max_tokens or self.engine.length + 1 > self.engine.max_seq_len:
                break
            logits = self.engine.decode(tok)
        if stats is not None:
            stats.setdefault("finish_reason", "length")
            stats.update(decode_tokens=n, decode_s=time.perf_counter() - t1)

    def stream_chat(self, messages: Sequence[dict[str, str]], max_tokens: int = 256, temperature: float = 0.0,
                    top_p: float = 1.0, seed: int | None = None, stats: dict | None = None) -> Iterator[str]:
        """Text deltas of the assistant's reply; stops at stop_str, stop ids and eos."""
        stop_str = [s for s in self.conv.stop_str if s]
        ids: list[int] = []
        emitted = ""
        for tok in self.stream_tokens(self.prompt_ids(messages), max_tokens, temperature, top_p, seed, stats):
            ids.append(tok)
            text = self.decode_tokens(ids)
            cut = min((text.find(s) for s in stop_str if s in text), default=-1)
            if cut >= 0:
                if stats is not None:
                    stats["finish_reason"] = "stop"
                if cut > len(emitted):
                    yield text[len(emitted):cut]
                return
            # hold back a partial UTF-8 char and anything that could start a stop string
            hold = max([len(s) - 1 for s in stop_str] + [0])
            safe = text[: len(text) - hold] if hold else text
            if safe.endswith("\ufffd"):
                continue
            if len(safe) > len(emitted):
                yield safe[len(emitted):]
                emitted = safe
        text = self.decode_tokens(ids)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def generate(self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 stream: bool = False, seed: int | None = None, system: str | None = None):
        """Reply to one user message with the artifact's conversation template.

        stream=True returns an iterator of text deltas; otherwise the full reply text.
        """
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        it = self.stream_chat(messages, max_tokens, temperature, top_p, seed)
        return it if stream else "".join(it)


def load(name_or_dir: str | Path | Artifact, device: str = "cpu", lib: str | Path | None = None,
         max_seq_len: int | None = None, log=None) -> Model:
    """Load an artifact (registry name or directory) on its library; builds the library if missing.

    An `Artifact` is loaded as is: `add`'s gate runs on the staged directory, which the registry
    does not resolve (it is an unfinished write until the gate passes)."""
    from registry.store import Registry  # noqa: PLC0415

    artifact = name_or_dir if isinstance(name_or_dir, Artifact) else Artifact(Registry().resolve(name_or_dir))
    chat_config = artifact.chat_config
    if lib is None:
        from personalize.library import ensure_library, library_config_from_chat_config  # noqa: PLC0415

        config = library_config_from_chat_config(chat_config, str(artifact.chat_config_path))
        target = "cuda" if device == "cuda" else "llvm"
        cached = ensure_library(config, chat_config["quantization"], target, log=log)
        lib_path, metadata = cached.path, cached.metadata
    else:
        from .engine import read_library_metadata  # noqa: PLC0415

        lib_path = Path(lib)
        if not lib_path.exists():
            raise RuntimeUserError(f"no library at {lib_path}", path=str(lib_path),
                                   hint="build one with `personalize lib build`")
        metadata = read_library_metadata(lib_path, device)
    check_artifact(metadata, artifact)
    from .engine import Engine  # noqa: PLC0415 - loads TVM

    engine = Engine(lib_path, artifact.path, int(chat_config["vocab_size"]), device, metadata, max_seq_len)
    return Model(artifact, engine, lib_path)
