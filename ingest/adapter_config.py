"""adapter_config.json: read it, and refuse what cannot be merged exactly or is not well typed.

Facts from peft 0.21.2: only LoRA (and DoRA, a LoRA option) merges into weights as W + s·BA;
prompt-learning methods have no weights; several LoRA options change the forward or the base.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import AdapterError

CONFIG_NAME = "adapter_config.json"

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

FIX_HINT = "restore the adapter_config.json that PeftModel.save_pretrained wrote for these weights"


def read_adapter_config(adapter_dir: Path) -> tuple[dict[str, Any], str]:
    """(config, sha256 of the file's bytes), after every check in `check_config`."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{CONFIG_NAME} not found in {adapter_dir}", path=path,
                           hint="pass the directory that PeftModel.save_pretrained wrote")
    raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterError(f"{CONFIG_NAME} is not valid JSON: {exc}", path=path,
                           hint="restore the file from the training run") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_NAME} is not a JSON object", path=path, hint="restore the file")
    check_config(config, path)
    return config, hashlib.sha256(raw).hexdigest()


def check_config(config: dict, path: Path) -> None:
    """Only plain LoRA/DoRA on the original base, with the fields the merge reads well typed."""
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
    _check_types(config, path)


def _check_types(config: dict, path: Path) -> None:
    """The fields the merge computes with: a bad one is a one-line error, never a traceback."""
    def bad(what: str) -> AdapterError:
        return AdapterError(f"{CONFIG_NAME}: {what}", path=path, hint=FIX_HINT)

    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise bad(f"base_model_name_or_path must be a path or a Hub id, got {base!r}")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if config.get(key) is not None and not isinstance(config[key], bool):  # "false" would mean true
            raise bad(f"{key} must be true or false, got {config[key]!r}")
    if "r" in config and not _positive_int(config["r"]):
        raise bad(f"r must be a positive integer, got {config['r']!r}")
    if "lora_alpha" in config and not _number(config["lora_alpha"]):
        raise bad(f"lora_alpha must be a number, got {config['lora_alpha']!r}")
    for field, valid, what in (("rank_pattern", _positive_int, "positive integers"),
                               ("alpha_pattern", _number, "numbers")):
        pattern = config.get(field)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise bad(f"{field} must be an object, got {pattern!r}")
        for key, value in pattern.items():
            try:
                re.compile(rf"(.*\.)?({key})$")  # how peft matches it against module paths
            except (re.error, RecursionError, OverflowError) as exc:
                raise bad(f"{field} key {key!r} is not a valid regular expression ({exc})") from exc
            if not valid(value):
                raise bad(f"{field}[{key!r}] must be {what}, got {value!r}")
    indices = config.get("trainable_token_indices")
    if indices is not None:
        lists = indices.values() if isinstance(indices, dict) else [indices]
        if not isinstance(indices, (list, dict)) or not all(
                isinstance(v, list) and all(_index(i) for i in v) for v in lists):
            raise bad("trainable_token_indices must be a list of token ids (or an object of such lists), "
                      f"got {indices!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")
