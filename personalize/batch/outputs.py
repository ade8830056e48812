"""The apps' view of a batch: one WebLLM appConfig and one mlc-package-config.json listing every
delivered variant, each entry built by publish/share.py exactly as `personalize share` builds it
(Hub URLs where the variant was pushed, `personalize serve` URLs where not). The variants of one
base and quantization share one library, so their entries name the same model_lib."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from registry.store import Registry, last_push

LOCAL_URL = "http://127.0.0.1:8765"  # `personalize serve`'s default address
APP_CONFIG = "app-config.json"
PACKAGE_CONFIG = "mlc-package-config.json"


def write_app_files(outcomes: list, registry: Registry, out_dir: Path, *, device: str = "iphone") -> dict:
    from publish.client import DEFAULT_ENDPOINT
    from publish.share import share_records

    records = []
    for o in outcomes:
        pushed = last_push(registry.home, o.name) or {}
        repo = (o.push or {}).get("repo_id") if (o.push or {}).get("status") != "failed" else None
        repo = repo or pushed.get("repo_id")
        if repo:
            doc = share_records(Path(o.path), name=o.name, repo_id=repo, revision=pushed.get("revision") or "main",
                                endpoint=pushed.get("endpoint") or DEFAULT_ENDPOINT)
        else:
            doc = share_records(Path(o.path), name=o.name, local_url=LOCAL_URL)
        records.append(doc)
    # A variant that fits none of MLC's prebuilt WebGPU libraries has no WebLLM record (share says why).
    app_config = {"model_list": [d["webllm"]["model_record"] for d in records if d["webllm"]["model_record"]]}
    package = {"device": device,
               "model_list": [d["mlc_package_config"].get(device, d["mlc_package_config"]["iphone"])["model_list"][0]
                              for d in records]}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"app_config": out_dir / APP_CONFIG, "mlc_package_config": out_dir / PACKAGE_CONFIG}
    _write_json(paths["app_config"], app_config)
    _write_json(paths["mlc_package_config"], package)
    libs = sorted({d["model_lib"] for d in records})
    no_webllm = {d["name"]: d["webllm"]["reason"] for d in records if not d["webllm"]["model_record"]}
    return {**{k: str(v) for k, v in paths.items()}, "variants": len(records), "model_libs": libs,
            "not_in_app_config": no_webllm}


def _write_json(path: Path, doc: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
