"""README.md model card for an artifact: Hub YAML front matter + lineage, numbers and how to run it.

Rendered from personalize.json (lineage), mlc-chat-config.json and the tensor cache of the artifact
directory (for the VRAM estimate), so it is deterministic and can be re-rendered for another repo
id at push time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from .deploy import estimate_vram, system_lib_name
from .errors import ArtifactError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_id(spec: Any) -> str | None:
    """'org/name' from 'org/name', 'hf://org/name[@rev]' or a Hub URL; None for local paths."""
    if not isinstance(spec, str) or not spec:
        return None
    s = spec.strip()
    for prefix in ("hf://", "HF://", "https://huggingface.co/"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    else:
        if s.startswith((".", "/", "~")):
            return None
    s = s.split("@", 1)[0].strip("/")
    s = "/".join(s.split("/")[:2])
    return s if _HUB_ID.match(s) else None


def _base_model(lineage: dict[str, Any]) -> tuple[str | None, str]:
    """(base model repo id or None, base_model_relation) as the Hub defines them."""
    source = lineage.get("source") or {}
    if source.get("kind") == "adapter":
        base = lineage.get("base") or {}
        return hub_id(base.get("spec")) or hub_id(base.get("hub")), "finetune"  # adapter merged into the base
    return hub_id(source.get("hub")) or hub_id(lineage.get("base_model")), "quantized"


def _license(lineage: dict[str, Any]) -> str | None:
    for doc in (lineage, lineage.get("source") or {}, lineage.get("base") or {}):
        value = doc.get("license")
        if isinstance(value, str) and value:
            return value
    return None


def _size_bytes(lineage: dict[str, Any], artifact_dir: Path | None) -> int | None:
    """Bytes of the artifact's files: from the lineage files map, else from the directory, else None."""
    files = lineage.get("files")
    if isinstance(files, dict) and files:
        return sum(int(f.get("size", 0)) for f in files.values() if isinstance(f, dict))
    if artifact_dir is not None and Path(artifact_dir).is_dir():
        return sum(p.stat().st_size for p in Path(artifact_dir).rglob("*") if p.is_file())
    return None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-.") or "model"


def _default_name(lineage: dict[str, Any], quantization: str) -> str:
    source = lineage.get("source") or {}
    stem = (hub_id(source.get("hub")) or "").split("/")[-1] or Path(str(source.get("path") or "model")).name
    return _slug(f"{stem}-{quantization}")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def front_matter(lineage: dict[str, Any], chat_config: dict[str, Any]) -> ModelCardData:
    base, relation = _base_model(lineage)
    quantization = chat_config.get("quantization") or lineage.get("quantization")
    model_type = chat_config.get("model_type") or lineage.get("model_type")
    tags = ["mlc-llm", "web-llm", "personalize"]
    tags += [t for t in (quantization, model_type) if t and t not in tags]
    if (lineage.get("source") or {}).get("kind") == "adapter":
        tags.append("merged-lora")
    fields: dict[str, Any] = {"library_name": "mlc-llm", "tags": tags, "pipeline_tag": "text-generation"}
    if base:
        fields["base_model"] = base
        fields["base_model_relation"] = relation
    lic = _license(lineage)
    if lic:
        fields["license"] = lic
    return ModelCardData(**fields)


def _lineage_lines(lineage: dict[str, Any]) -> list[str]:
    source = lineage.get("source") or {}
    lines = []
    where = source.get("hub") or source.get("path")
    rev = f" @ `{source['revision']}`" if source.get("revision") else ""
    lines.append(f"- Source ({source.get('kind', 'model')}): `{where}`{rev}")
    if source.get("content_sha256"):
        lines.append(f"- Source weights sha256: `{source['content_sha256']}`")
    base = lineage.get("base")
    if base:
        brev = f" @ `{base['revision']}`" if base.get("revision") else ""
        lines.append(f"- Base model: `{base.get('spec') or base.get('path')}`{brev}")
        if base.get("content_sha256"):
            lines.append(f"- Base weights sha256: `{base['content_sha256']}`")
    adapter = lineage.get("adapter")
    if adapter:
        cfg = adapter.get("config") or {}
        detail = ", ".join(f"{k}={cfg[k]}" for k in ("r", "lora_alpha", "target_modules") if k in cfg)
        lines.append(f"- Adapter: {adapter.get('peft_type', 'LORA')} ({detail}), merged in float32 before quantization")
    tools = lineage.get("tools") or {}
    if tools:
        lines.append("- Tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()))
    return lines


def _eval_lines(ev: dict[str, Any]) -> list[str]:
    rows = [("mean KL(reference ‖ artifact) per token", "mean_kl", "{:.4g}"),
            ("top-1 agreement", "top1_agreement", "{:.3f}"),
            ("perplexity, reference", "perplexity_reference", "{:.3f}"),
            ("perplexity, artifact", "perplexity_artifact", "{:.3f}"),
            ("positions compared", "positions", "{}")]
    out = ["| measure | value |", "|---|---|"]
    for label, key, fmt in rows:
        if key in ev and ev[key] is not None:
            out.append(f"| {label} | {fmt.format(ev[key])} |")
    extra = ", ".join(f"{k}: {ev[k]}" for k in ("reference", "device") if ev.get(k))
    if extra:
        out += ["", f"Reference and device: {extra}."]
    limits = ev.get("limits")
    if limits:
        out += ["", "Gate limits: " + ", ".join(f"{k} {v}" for k, v in limits.items()) + "."]
    return out


def _scales_note(lineage: dict) -> str:
    options = lineage.get("quantization_options") or {}
    scales = options.get("scales", "mlc")
    if scales == "mlc":
        return ", byte-identical with `mlc_llm convert_weight`"
    cal = options.get("calibration")
    if isinstance(cal, dict):
        quality = cal.get("quality") or {}
        return (f", calibrated rounding ({cal.get('method')} v{cal.get('version')}, {cal.get('tokens')} tokens of "
                f"`{cal.get('text')}` text, sha256 {str(cal.get('text_sha256'))[:12]}; output error on that text "
                f"{quality.get('output_error_vs_mlc_total')} x MLC's rounding) in MLC's exact format: any MLC "
                "runtime and library of this quantization runs it, but the bytes differ from `mlc_llm convert_weight`")
    return (f", per-group scales chosen by personalize (`{scales}`) in MLC's exact format: any MLC runtime "
            "and library of this quantization runs it, but the bytes differ from `mlc_llm convert_weight`")


def _vram_bytes(chat_config: dict, artifact_dir: Path) -> int | None:
    """The same estimate `personalize share` prints (weights + KV cache + activations)."""
    from .tensor_cache import TensorCache  # noqa: PLC0415

    try:
        return estimate_vram(chat_config, TensorCache(artifact_dir).doc).total
    except ArtifactError:
        return None


def _exactness(lineage: dict[str, Any]) -> str:
    """The claim the card may make: bit-exact with MLC only for MLC's own (default) scales."""
    scales = (lineage.get("quantization_options") or {}).get("scales", "mlc")
    if scales == "mlc":
        return "bit-exact with `mlc_llm convert_weight`"
    if scales == "calibrated":
        return "in MLC's exact format with calibrated rounding (not byte-identical with `mlc_llm convert_weight`)"
    return f"in MLC's exact format (per-group scales chosen by personalize, `{scales}`)"


def render_model_card(lineage: dict[str, Any], chat_config: dict[str, Any], *, repo_id: str | None,
                      artifact_dir: Path) -> str:
    """The README.md text (YAML front matter + Markdown body).

    `artifact_dir` is required: the VRAM estimate (and, before lineage["files"] exists, the size)
    come from the directory. Prefer `Artifact(path).render_card(repo_id)`.
    """
    data = front_matter(lineage, chat_config)
    quantization = chat_config.get("quantization") or lineage.get("quantization", "?")
    model_type = chat_config.get("model_type") or lineage.get("model_type", "?")
    name = lineage.get("name") or (repo_id.split("/")[-1] if repo_id else _default_name(lineage, quantization))
    size = _size_bytes(lineage, artifact_dir)
    key = lineage.get("library_key", "?")
    conv = chat_config.get("conv_template") or {}
    model_id = repo_id.split("/")[-1] if repo_id else name
    model_ref = f"HF://{repo_id}" if repo_id else f"./{name}"
    url = f"https://huggingface.co/{repo_id}" if repo_id else f"https://huggingface.co/<org>/{name}"
    prebuilt = lineage.get("prebuilt_library") or {}

    body = [f"# {name}", "",
            f"MLC LLM weights ({quantization}) of a personalized `{model_type}` model, written by "
            f"personalize, {_exactness(lineage)}. They run on an "
            "already-compiled model library of the base architecture: no recompilation.", "",
            "## Lineage", "", *_lineage_lines(lineage), "",
            "## Format", "",
            f"- Quantization: `{quantization}`" + _scales_note(lineage),
            f"- Model type: `{model_type}`; vocabulary {chat_config.get('vocab_size', '?')}, "
            f"context window {chat_config.get('context_window_size', '?')}",
            f"- Conversation template: `{conv.get('name', '?')}`",
            f"- Size on disk: {_human(size) if size is not None else 'not recorded'}",
            f"- Library key: `{key}` — any model library compiled for this key (same architecture shape, "
            "compiled-in hyper-parameters and quantization) runs these weights.", ""]
    if isinstance(lineage.get("eval"), dict):
        body += ["## Equivalence with the PyTorch model", "",
                 "Next-token distributions of this artifact compared with the source model in transformers "
                 "on fixed prompts:", "", *_eval_lines(lineage["eval"]), ""]
    vram = _vram_bytes(chat_config, artifact_dir)
    package_entry = {"model": model_ref if repo_id else f"HF://<org>/{name}", "model_id": model_id,
                     "estimated_vram_bytes": vram if vram is not None else "<bytes: weights + KV cache>",
                     "model_lib": system_lib_name(model_type, quantization, key), "bundle_weight": False}
    body += ["## How to run", "", "### mlc_llm CLI", "",
             "mlc_llm compiles (or finds in its cache) the library for this config on first run.", "", "```bash",
             f"mlc_llm chat {model_ref}", "```", "", "### WebLLM", ""]
    if prebuilt.get("url"):  # MLC's own prebuilt library fits (recorded by `add`, from the catalog)
        body += [f"Runs on MLC's prebuilt `{prebuilt['library']}` (built for {prebuilt['base_model']}) with "
                 f"@mlc-ai/web-llm {prebuilt['webllm_range']}.", "", "```js",
                 "import { CreateMLCEngine } from \"@mlc-ai/web-llm\";",
                 "const appConfig = { model_list: [{",
                 f"  model: \"{url}\",",
                 f"  model_id: \"{model_id}\",",
                 f"  model_lib: \"{prebuilt['url']}\",",
                 f"  overrides: {{ context_window_size: {prebuilt['context_window_size']} }},",
                 "}] };",
                 f"const engine = await CreateMLCEngine(\"{model_id}\", {{ appConfig }});", "```", ""]
    else:
        body += [prebuilt.get("reason") or "No MLC prebuilt WebGPU library is recorded for this artifact; "
                 "WebLLM needs one compiled with `mlc_llm compile --device webgpu`.", ""]
    body += ["### iOS / Android (mlc-package-config.json)", "", "```json", json.dumps(package_entry, indent=2),
             "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
