"""Read and validate a PEFT LoRA adapter directory, lazily.

`load_adapter(dir)` reads adapter_config.json and indexes the weights file (safetensors through
safe_open, or a .bin through torch.load(weights_only=True)) without loading tensors. It turns PEFT's
key layouts into one plan per *base* tensor (a `TensorEdit`): which full replacement, which LoRA
factors with which scaling, which DoRA magnitude, which token rows. `ingest.merge.merge_tensor`
applies a plan to one base tensor at a time.

Facts taken from peft 0.21.2 (read, not copied): scaling is alpha/r, or alpha/sqrt(r) with
use_rslora; rank_pattern/alpha_pattern keys are matched against the module path with
`re.match(rf"(.*\\.)?({key})$", path)`, first match in dict order; LoRA on nn.Embedding stores
lora_embedding_A as [r, vocab] and lora_embedding_B as [hidden, r]; modules_to_save and resized
embeddings are saved as full tensors; DoRA's magnitude is saved as `lora_magnitude_vector`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from ingest.errors import IngestError

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

# Modules whose first dimension is the vocabulary: a resized vocab may change it.
VOCAB_MODULES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out")

# PEFT methods that add virtual tokens at run time: there is nothing to merge into weights.
PROMPT_LEARNING_TYPES = {
    "PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT", "CPT",
    "CARTRIDGE",
}

# LoRA variants whose merge is not W + s·BA (or DoRA): refused rather than merged wrong.
UNSUPPORTED_LORA_FEATURES = {
    "layer_replication": "it stacks copies of base layers, so the merged model has a different layer count",
    "target_parameters": "it adapts raw nn.Parameters (MoE experts), which this merger does not map",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens, so it cannot be merged",
    "velora_config": "VeLoRA changes the LoRA forward",
    "monteclora_config": "MonteCLoRA samples its LoRA factors",
    "arrow_config": "Arrow routes between several adapters at run time",
    "kasa_config": "KaSA adds a singular-value diagonal (lora_diag) and truncates the base",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "use_qalora": "QA-LoRA pools inputs for a GPTQ base",
}

# init_lora_weights values that change the *base* weights (a residual); such an adapter only merges
# correctly into that residual, unless it was converted when saved.
RESIDUAL_INITS = ("pissa", "corda", "olora", "lora_ga")

# Module classes that store weights as [in, out] (transformers' Conv1D); peft forces
# fan_in_fan_out=False on nn.Linear, so the flag only matters for these architectures.
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}


class AdapterError(IngestError):
    """A user-facing problem with an adapter: `path` is the file at fault, `hint` says what to do."""


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA pair on one module, with the scaling peft would give it."""

    a_key: str
    b_key: str
    scaling: float
    rank: int
    embedding: bool = False  # lora_embedding_A [r, vocab] / lora_embedding_B [hidden, r]
    magnitude_key: str | None = None  # DoRA
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class TensorEdit:
    """Everything an adapter does to one base tensor, applied in this order."""

    hf_name: str
    replacement_key: str | None = None  # full tensor that replaces the base (modules_to_save, resize)
    lora: LoraFactors | None = None  # weight += s·BA (or the DoRA merge)
    bias_delta: tuple[str, float] | None = None  # bias += s·lora_B.bias
    token_rows: tuple[str, tuple[int, ...]] | None = None  # rows[indices] = trainable tokens

    @property
    def changes_vocab_dim(self) -> bool:
        return _module_leaf(self.hf_name.rsplit(".", 1)[0]) in VOCAB_MODULES


class _WeightsFile:
    """Uniform lazy access to adapter_model.safetensors or adapter_model.bin."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._st = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
                raise AdapterError(f"cannot read adapter weights: {exc}", path=path,
                                   hint="the file is damaged or not safetensors; save the adapter again") from exc
            self._bin = None
            self._keys = list(self._st.keys())
        else:
            try:
                try:
                    sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # old (non-zip) torch format cannot be memory-mapped
                    sd = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise AdapterError(f"cannot read adapter weights: {exc}", path=path,
                                   hint="the file must be a plain state dict of tensors; "
                                        "re-save it with save_pretrained(safe_serialization=True)") from exc
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise AdapterError("adapter_model.bin is not a state dict of tensors", path=path,
                                   hint="re-save the adapter with peft's save_pretrained")
            self._st = None
            self._bin = sd
            self._keys = list(sd.keys())

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        if self._st is not None:
            return tuple(self._st.get_slice(key).get_shape())
        return tuple(self._bin[key].shape)

    def get(self, key: str) -> torch.Tensor:
        if self._st is not None:
            return self._st.get_tensor(key)
        return self._bin[key]


def get_pattern_key(pattern_keys: Iterable[str], module_path: str) -> str:
    """peft's rule: the first pattern that matches a dotted suffix of the module path, else the path."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_path):
            return key
    return module_path


def _module_leaf(module_path: str) -> str:
    return module_path.rsplit(".", 1)[-1]


# Key layouts, after the `base_model.model.` prefix is removed. An adapter-name segment
# (".default") is optional: peft strips it when saving, some tools keep it.
_KEY_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("lora_A", re.compile(r"^(?P<mod>.+)\.lora_A(?:\.[^.]+)?\.weight$")),
    ("lora_B", re.compile(r"^(?P<mod>.+)\.lora_B(?:\.[^.]+)?\.weight$")),
    ("lora_B_bias", re.compile(r"^(?P<mod>.+)\.lora_B(?:\.[^.]+)?\.bias$")),
    ("emb_A", re.compile(r"^(?P<mod>.+)\.lora_embedding_A(?:\.[^.]+)?$")),
    ("emb_B", re.compile(r"^(?P<mod>.+)\.lora_embedding_B(?:\.[^.]+)?$")),
    ("magnitude", re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")),
    ("tokens", re.compile(r"^(?P<mod>.+)\.token_adapter\.trainable_tokens_delta(?:\.[^.]+)?$")),
    ("original", re.compile(r"^(?P<mod>.+)\.original_module\.(?P<param>[^.]+)$")),
    ("saved", re.compile(r"^(?P<mod>.+)\.modules_to_save(?:\.[^.]+)?\.(?P<param>weight|bias)$")),
    ("base_layer", re.compile(r"^(?P<mod>.+)\.base_layer\.(?P<param>weight|bias)$")),
]
# Tensors of other PEFT methods (or LoRA variants) that must not be taken for a replacement.
_FOREIGN_MARKERS = ("lora_", "ia3_", "hada_", "lokr_", "vera_", "oft_", "boft_", "ranklist", "fourierft_")


@dataclass
class Adapter:
    """A PEFT LoRA adapter, indexed but not loaded. Build it with `load_adapter`."""

    adapter_dir: Path
    weights_path: Path
    config: dict[str, Any]
    config_sha256: str
    _weights: _WeightsFile = field(repr=False)
    _edits: dict[str, TensorEdit] = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list)
    _base_vocab_size: int | None = field(default=None, repr=False)

    # --- what the integrator reads -------------------------------------------------------------

    @property
    def base_model_name_or_path(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    def target_hf_names(self) -> set[str]:
        """The base HF tensor names this adapter changes."""
        return set(self._edits)

    def edit_for(self, hf_name: str) -> TensorEdit | None:
        return self._edits.get(hf_name)

    def tensor(self, key: str) -> torch.Tensor:
        """One adapter tensor, read now, as float32."""
        return self._weights.get(key).to(torch.float32)

    def resized_vocab_size(self, base_vocab_size: int | None = None) -> int | None:
        """The vocab size of replaced embed_tokens/lm_head when it differs from the base's.

        The base's vocab comes from `base_vocab_size` or from `check_against_base`; with neither,
        this is the vocab size the adapter's embedding/head tensors carry (None if it carries none).
        """
        base_vocab = base_vocab_size if base_vocab_size is not None else self._base_vocab_size
        sizes = {self._weights.shape(e.replacement_key)[0] for e in self._edits.values()
                 if e.replacement_key and e.changes_vocab_dim and e.hf_name.endswith(".weight")}
        sizes |= {self._weights.shape(e.lora.a_key)[1] for e in self._edits.values()
                  if e.lora is not None and e.lora.embedding}
        if not sizes:
            return None
        if len(sizes) > 1:
            raise self._error(f"embedding and lm_head replacements disagree on the vocab size: {sorted(sizes)}",
                              hint="the adapter is inconsistent; save it again after resize_token_embeddings")
        (size,) = sizes
        return size if base_vocab is None or size != base_vocab else None

    # --- validation against the base ------------------------------------------------------------

    def check_against_base(self, base_shapes: dict[str, tuple[int, ...]], base_config: dict) -> None:
        """Refuse an adapter whose tensors do not fit the base; names the first mismatching tensor.

        Also settles two layout questions that need the base: a checkpoint without the `model.`
        prefix (adapter saved on a bare LlamaModel), and lm_head on a tied-embedding base.
        """
        base_shapes = {k: tuple(v) for k, v in base_shapes.items()}
        self._base_vocab_size = base_config.get("vocab_size")
        self._remap_to_base_names(base_shapes)
        self._settle_fan_in_fan_out(base_config)
        self._settle_tied_head(base_shapes, base_config)
        for name in sorted(self._edits):
            self._check_edit(self._edits[name], base_shapes)
        self._check_vocab_consistent(base_shapes)

    def _check_vocab_consistent(self, base_shapes: dict[str, tuple[int, ...]]) -> None:
        """A resized vocab must reach every vocab-sized base tensor, or the model is half resized."""
        new_vocab = self.resized_vocab_size()
        if new_vocab is None:
            return
        for name, shape in sorted(base_shapes.items()):
            if _module_leaf(name.rsplit(".", 1)[0]) not in VOCAB_MODULES or not name.endswith(".weight"):
                continue
            edit = self._edits.get(name)
            if edit is None or (edit.replacement_key is None and not (edit.lora and edit.lora.embedding)):
                raise self._error(
                    f"the adapter resizes the vocabulary to {new_vocab} but carries no {name} of that size "
                    f"(the base has {shape[0]} rows)",
                    hint="peft did not save the resized tensor, so its new rows are lost; save the adapter again "
                         f"with save_embedding_layers=True or with '{_module_leaf(name.rsplit('.', 1)[0])}' in "
                         "modules_to_save")

    def _remap_to_base_names(self, base_shapes: dict[str, tuple[int, ...]]) -> None:
        """An adapter saved on a bare decoder (LlamaModel) lacks the `model.` prefix of *ForCausalLM."""
        def base_name(name: str) -> str:
            return f"model.{name}" if name not in base_shapes and f"model.{name}" in base_shapes else name

        self._edits = {base_name(n): replace(e, hf_name=base_name(n)) for n, e in self._edits.items()}

    def _settle_fan_in_fan_out(self, base_config: dict) -> None:
        if not self.config.get("fan_in_fan_out"):
            return
        if base_config.get("model_type") in CONV1D_MODEL_TYPES:
            return
        # peft resets fan_in_fan_out to False for nn.Linear targets (with a warning); do the same.
        self._warn("fan_in_fan_out=True is ignored for nn.Linear layers, as peft does")
        for name, e in list(self._edits.items()):
            if e.lora is not None and e.lora.fan_in_fan_out:
                self._edits[name] = replace(e, lora=replace(e.lora, fan_in_fan_out=False))

    def _settle_tied_head(self, base_shapes: dict[str, tuple[int, ...]], base_config: dict) -> None:
        head = next((n for n in self._edits if n.endswith("lm_head.weight")), None)
        embed = next((n for n in self._edits if n.endswith("embed_tokens.weight")), None)
        tied = bool(base_config.get("tie_word_embeddings")) or (
            head is not None and head not in base_shapes and any(n.endswith("embed_tokens.weight") for n in base_shapes))
        if embed is not None and tied and head is None:
            self._warn("the base ties lm_head to embed_tokens: the embedding change also changes the "
                       "output head, as in peft's merge_and_unload")
        if head is None or not tied:
            return
        if embed is not None and self._same_effect(self._edits[head], self._edits[embed]):
            # A tied model trained with resize_token_embeddings / ensure_weight_tying saves the same
            # tensor twice; the library's head is the embedding, so the lm_head copy adds nothing.
            del self._edits[head]
            return
        raise self._error(
            f"the adapter changes {head} but the base ties lm_head to the embedding "
            "(tie_word_embeddings=true)",
            hint="the fixed library computes logits with the embedding matrix, so a separate lm_head cannot be "
                 "expressed; retrain without lm_head in target_modules/modules_to_save (or with "
                 "ensure_weight_tying=True), or merge with peft and convert the result as an untied full fine-tune")

    def _same_effect(self, head: TensorEdit, embed: TensorEdit) -> bool:
        """True when the lm_head edit is exactly the embedding edit (what a tied model saves)."""
        if (head.lora is not None and head.lora.magnitude_key) or head.bias_delta:
            return False
        if (head.replacement_key is None) != (embed.replacement_key is None):
            return False
        if head.replacement_key and not torch.equal(self._weights.get(head.replacement_key),
                                                    self._weights.get(embed.replacement_key)):
            return False
        if (head.lora is None) != (embed.lora is None):
            return False
        if head.lora is not None:
            if not embed.lora.embedding or head.lora.scaling != embed.lora.scaling:
                return False
            # peft ties lm_head's lora_A to embed's lora_embedding_B.T and lora_B to lora_embedding_A.T
            if not (torch.equal(self._weights.get(head.lora.a_key), self._weights.get(embed.lora.b_key).T)
                    and torch.equal(self._weights.get(head.lora.b_key), self._weights.get(embed.lora.a_key).T)):
                return False
        return head.token_rows is None  # peft ties token rows itself and saves them once, on the embedding

    def _check_edit(self, e: TensorEdit, base_shapes: dict[str, tuple[int, ...]]) -> None:
        if e.hf_name not in base_shapes:
            what = "bias" if e.hf_name.endswith(".bias") else "tensor"
            hint = ("the base has no bias here, so a trained bias (bias='all'/'lora_only' or lora_bias=True) "
                    "cannot be expressed; retrain with bias='none' and lora_bias=False"
                    if what == "bias" else "check that --base is the model the adapter was trained on")
            raise self._error(f"the adapter changes {e.hf_name}, a {what} the base model does not have", hint=hint)
        base = base_shapes[e.hf_name]
        shape = base
        if e.replacement_key:
            got = self._weights.shape(e.replacement_key)
            fits = got == base or (e.changes_vocab_dim and len(got) == len(base) and got[1:] == base[1:])
            if not fits:
                raise self._shape_error(e.replacement_key, got, base, e.hf_name)
            shape = got
        if e.lora is not None:
            a, b = self._weights.shape(e.lora.a_key), self._weights.shape(e.lora.b_key)
            # Which base dimension each factor spans: lora_A its input side, lora_B its output side.
            # nn.Linear [out, in]; Conv1D (fan_in_fan_out) [in, out]; embedding [vocab, hidden] with
            # lora_embedding_A [r, vocab] and lora_embedding_B [hidden, r].
            a_dim, b_dim = (0, 1) if (e.lora.embedding or e.lora.fan_in_fan_out) else (1, 0)
            for key, got, dim, rank_axis in ((e.lora.a_key, a, a_dim, 0), (e.lora.b_key, b, b_dim, 1)):
                other = 1 - rank_axis
                if len(got) != 2 or got[other] != shape[dim] or got[rank_axis] != e.lora.rank:
                    raise self._error(
                        f"adapter tensor {key} has shape {got}, which does not fit base tensor {e.hf_name} "
                        f"{shape} at rank {e.lora.rank}",
                        hint="the adapter was trained on a different model (other hidden size or vocab); "
                             "pass the right --base")
            if e.lora.magnitude_key:
                m = self._weights.shape(e.lora.magnitude_key)
                out = shape[1] if e.lora.fan_in_fan_out else shape[0]
                if m != (out,):
                    raise self._shape_error(e.lora.magnitude_key, m, (out,), e.hf_name)
        if e.bias_delta:
            got = self._weights.shape(e.bias_delta[0])
            if got != base:
                raise self._shape_error(e.bias_delta[0], got, base, e.hf_name)
        if e.token_rows:
            key, idx = e.token_rows
            got = self._weights.shape(key)
            if got != (len(idx), shape[1]) or (idx and max(idx) >= shape[0]):
                raise self._error(f"adapter tensor {key} {got} does not fit {e.hf_name} {shape} with "
                                  f"{len(idx)} trainable token indices (max {max(idx) if idx else None})",
                                  hint="pass the base the adapter was trained on")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _shape_error(self, key: str, got: tuple, want: tuple, hf_name: str) -> AdapterError:
        return self._error(f"adapter tensor {key} has shape {got}, the base tensor {hf_name} needs {want}",
                           hint="the adapter was trained on a different model (other hidden size?); "
                                "pass the right --base")

    def _error(self, message: str, hint: str | None = None) -> AdapterError:
        return AdapterError(message, path=self.weights_path, hint=hint)

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self._weights._st = None
        self._weights._bin = None

    def __enter__(self) -> "Adapter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_adapter(adapter_dir: Path | str) -> Adapter:
    """Read adapter_config.json and index the weights; refuse what cannot be merged exactly."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterError(f"{CONFIG_NAME} not found in {adapter_dir}", path=config_path,
                           hint="pass the directory that PeftModel.save_pretrained wrote")
    raw = config_path.read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{CONFIG_NAME} is not valid JSON: {exc}", path=config_path,
                           hint="restore the file from the training run") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_NAME} is not a JSON object", path=config_path, hint="restore the file")
    _check_config(config, config_path)

    weights_path = adapter_dir / SAFETENSORS_NAME
    if not weights_path.is_file():
        weights_path = adapter_dir / BIN_NAME
    if not weights_path.is_file():
        raise AdapterError(f"no {SAFETENSORS_NAME} or {BIN_NAME} in {adapter_dir}", path=adapter_dir,
                           hint="the adapter directory is incomplete; copy the weights file next to the config")
    adapter = Adapter(adapter_dir=adapter_dir, weights_path=weights_path, config=config,
                      config_sha256=hashlib.sha256(raw).hexdigest(), _weights=_WeightsFile(weights_path))
    adapter._edits = _plan_edits(adapter)
    if str(config.get("init_lora_weights")).lower() == "loftq":
        adapter.warnings.append("LoftQ adapters were trained against a quantized base; merging into the "
                                "full-precision base is close to, not equal to, the trained model")
    return adapter


def _check_config(config: dict, path: Path) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        if peft_type in PROMPT_LEARNING_TYPES:
            hint = ("prompt-learning adapters add virtual tokens at run time; there are no weights to merge, "
                    "so they cannot become a weight-only artifact")
        else:
            hint = ("merge it with peft first (PeftModel.from_pretrained(base, dir).merge_and_unload()"
                    ".save_pretrained(out)) and add the merged directory as a full fine-tune")
        raise AdapterError(f"PEFT type {peft_type or '(missing)'} is not supported; only LoRA adapters are merged",
                           path=path, hint=hint)
    for key, why in UNSUPPORTED_LORA_FEATURES.items():
        if config.get(key):
            raise AdapterError(f"LoRA option {key} is not supported: {why}", path=path,
                               hint="merge it with peft's merge_and_unload and add the result as a full fine-tune")
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(RESIDUAL_INITS) or init == "mica":
        raise AdapterError(
            f"init_lora_weights={config.get('init_lora_weights')!r}: this adapter belongs to a modified "
            "(residual) base, not to the original base", path=path,
            hint="save it again with save_pretrained(path_initial_model_for_weight_conversion=...) so that it "
                 "applies to the original base, or merge with peft and add the result as a full fine-tune")


def _plan_edits(adapter: Adapter) -> dict[str, TensorEdit]:
    """Group the adapter's tensors by the base tensor they change."""
    config = adapter.config
    keys = adapter._weights.keys()
    parts: dict[str, dict[str, str]] = {}  # module path -> role -> key
    replacements: dict[str, str] = {}  # hf name -> key
    for key in keys:
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for role, pattern in _KEY_PATTERNS:
            m = pattern.match(name)
            if m is None:
                continue
            if role == "original":
                break  # peft's copy of the untouched base module: nothing to merge
            if role in ("saved", "base_layer"):
                _add_unique(replacements, f"{m['mod']}.{m['param']}", key, adapter)
            else:
                if role in parts.setdefault(m["mod"], {}):
                    raise adapter._error(f"two tensors for {role} of {m['mod']}: {parts[m['mod']][role]}, {key}",
                                         hint="the file holds several adapters; save one adapter per directory")
                parts[m["mod"]][role] = key
            break
        else:
            leaf = name.rsplit(".", 1)[-1]
            if any(marker in name for marker in _FOREIGN_MARKERS) or leaf not in ("weight", "bias"):
                raise adapter._error(f"unsupported adapter tensor {key}",
                                     hint="only LoRA/DoRA factors, modules_to_save and resized embeddings "
                                          "can be merged; merge with peft and add the result as a full fine-tune")
            _add_unique(replacements, name, key, adapter)  # modules_to_save / resized vocab / bias="all"

    edits: dict[str, TensorEdit] = {name: TensorEdit(hf_name=name, replacement_key=key)
                                    for name, key in replacements.items()}
    token_indices = config.get("trainable_token_indices")
    for mod, roles in parts.items():
        weight_name = f"{mod}.weight"
        edit = edits.get(weight_name, TensorEdit(hf_name=weight_name))
        lora = _lora_factors(adapter, mod, roles)
        if lora is not None:
            edit = replace(edit, lora=lora)
        if "tokens" in roles:
            edit = replace(edit, token_rows=(roles["tokens"], _token_indices(adapter, mod, token_indices)))
        if "lora_B_bias" in roles:
            bias_name = f"{mod}.bias"
            edits[bias_name] = replace(edits.get(bias_name, TensorEdit(hf_name=bias_name)),
                                       bias_delta=(roles["lora_B_bias"], lora.scaling if lora else 1.0))
        if edit.lora is not None or edit.token_rows is not None:
            edits[weight_name] = edit
    return edits


def _add_unique(target: dict[str, str], name: str, key: str, adapter: Adapter) -> None:
    """One replacement per base tensor. peft saves a resized modules_to_save module twice (as
    `x.weight` and `x.modules_to_save.weight`), with equal values; different values are ambiguous."""
    if name in target:
        if torch.equal(adapter._weights.get(target[name]), adapter._weights.get(key)):
            return
        raise adapter._error(f"two different replacement tensors for {name}: {target[name]} and {key}",
                             hint="the file holds several adapters; save one adapter per directory")
    target[name] = key


def _lora_factors(adapter: Adapter, mod: str, roles: dict[str, str]) -> LoraFactors | None:
    config = adapter.config
    linear = "lora_A" in roles or "lora_B" in roles
    embedding = "emb_A" in roles or "emb_B" in roles
    if not linear and not embedding:
        if "magnitude" in roles or "lora_B_bias" in roles:
            raise adapter._error(f"{mod} has DoRA/bias tensors but no LoRA factors",
                                 hint="the adapter file is incomplete; save it again")
        return None
    if linear and embedding:
        raise adapter._error(f"{mod} has both linear and embedding LoRA factors", hint="save the adapter again")
    a_key = roles.get("lora_A" if linear else "emb_A")
    b_key = roles.get("lora_B" if linear else "emb_B")
    if a_key is None or b_key is None:
        raise adapter._error(f"{mod} has only one of its two LoRA factors", hint="save the adapter again")
    if embedding and "magnitude" in roles:
        raise adapter._error(f"DoRA on the embedding {mod} is not supported",
                             hint="retrain with use_dora=False for embeddings (DoRA on linear layers is fine), "
                                  "or merge with peft and add the result as a full fine-tune")
    a_shape = adapter._weights.shape(a_key)
    rank = int(a_shape[0]) if a_shape else 0
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), mod), config.get("r", 8))
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), mod), config.get("lora_alpha", 8))
    if r != rank:
        raise adapter._error(f"adapter tensor {a_key} has rank {rank} but adapter_config.json gives r={r} for {mod}",
                             hint="the config does not belong to these weights; restore the matching "
                                  "adapter_config.json (check r and rank_pattern)")
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return LoraFactors(a_key=a_key, b_key=b_key, scaling=scaling, rank=rank, embedding=embedding,
                       magnitude_key=roles.get("magnitude"),
                       fan_in_fan_out=bool(config.get("fan_in_fan_out")) and not embedding)


def _token_indices(adapter: Adapter, mod: str, spec: Any) -> tuple[int, ...]:
    if isinstance(spec, list):
        return tuple(int(i) for i in spec)
    if isinstance(spec, dict):
        for name, indices in spec.items():
            if mod == name or mod.endswith(f".{name}"):
                return tuple(int(i) for i in indices)
    raise adapter._error(f"trainable token rows for {mod} but no matching trainable_token_indices in the config",
                         hint="restore the adapter_config.json that belongs to these weights")
