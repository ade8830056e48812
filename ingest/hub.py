"""`add hf://ORG/NAME[@REVISION]`: download the source files `add` reads, pinned to one commit.

The URI is parsed by huggingface_hub's own `parse_hf_uri`; only model repos at their top level are
sources. The token (HF_TOKEN or the login cache) is used, never shown.
"""

from __future__ import annotations

import os
from pathlib import Path

from publish.client import HubError, check_repo_id, get_token, hub_call, make_api

HF_SCHEME = "hf://"
# What `add hf://` downloads from a source repo: top-level config, tokenizer and weight files only.
SOURCE_SUFFIXES = (".json", ".jinja", ".model", ".tiktoken", ".txt", ".safetensors")
TORCH_WEIGHT_SUFFIXES = (".bin",)


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """'hf://ORG/NAME[@REVISION]' -> (repo_id, revision or None)."""
    from huggingface_hub.errors import HfUriError
    from huggingface_hub.utils import parse_hf_uri

    uri = spec if spec.startswith(HF_SCHEME) else HF_SCHEME + spec
    try:
        parsed = parse_hf_uri(uri)
    except HfUriError as exc:
        raise HubError(f"invalid Hub source {spec!r}: {exc}", path=spec,
                       hint="use hf://ORG/NAME or hf://ORG/NAME@REVISION") from None
    if parsed.type != "model" or parsed.path_in_repo:
        raise HubError(f"{spec!r} is not a model repo", path=spec,
                       hint="use hf://ORG/NAME[@REVISION]: a model repo, not a dataset, space or a file in it")
    return check_repo_id(parsed.id), parsed.revision


def source_files(names: list[str]) -> list[str]:
    """The files of a source repo that `add` needs: top-level configs, tokenizer, weights (safetensors first)."""
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n.endswith(SOURCE_SUFFIXES)]
    if not any(n.endswith(".safetensors") for n in top):
        wanted += [n for n in top if n.endswith(TORCH_WEIGHT_SUFFIXES)]
    return sorted(wanted)


def download_source(spec: str, *, token: str | None = None, endpoint: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Download `hf://ORG/NAME[@REVISION]` (only what `add` reads); return (local dir, commit sha).

    The revision is resolved to a commit first and the snapshot is taken at that commit, so the sha
    returned is exactly what was downloaded.
    """
    import huggingface_hub

    repo_id, revision = parse_hf_spec(spec)
    api = make_api(get_token(token), endpoint)
    where = api.endpoint.rstrip("/")
    info = hub_call(lambda: api.model_info(repo_id, revision=revision), repo_id, where)
    wanted = source_files([s.rfilename for s in (info.siblings or [])])
    if not any(n in ("config.json", "adapter_config.json") for n in wanted):
        raise HubError(f"{repo_id} has neither config.json nor adapter_config.json at its top level",
                       path=f"{where}/{repo_id}", hint="point at a transformers model repo or a PEFT adapter repo")
    local = hub_call(lambda: huggingface_hub.snapshot_download(
        repo_id, revision=info.sha, allow_patterns=wanted, cache_dir=cache_dir, endpoint=endpoint,
        token=api.token), repo_id, where)
    return Path(local), info.sha
