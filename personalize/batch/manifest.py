"""The batch manifest (YAML or JSON): one base, many sources, quantizations, push targets, gate on/off.

    base: ./base-model              # HF dir, registry name or hf://ORG/NAME[@REV]
    quantization: q4f16_1           # or a list; every variant is made in each (unless it names its own)
    eval: true                      # the equivalence gate (default on)
    push: "me/{name}-MLC"           # optional: a repo id, or a pattern of {name} {quantization} {source}
    variants:
      - source: ./adapters/alice    # adapter or full fine-tune dir, hf://ORG/NAME[@REV], or a glob
      - source: ./adapters/bob
        name: bob-q4f16_1           # default: as `add` names it (<dir>-<quantization>)
        quantization: [q4f16_1, q0f16]
        push: acme/bob              # per item; `push: false` turns an inherited pattern off
        eval: false

Relative paths are relative to the manifest's directory. Everything is checked before any work starts.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalize_errors import UserError

HF_SCHEME = "hf://"
TOP_KEYS = {"base", "quantization", "quantizations", "eval", "push", "private", "scales", "variants", "device",
            "conv_template", "force_base", "force", "package_device"}
ITEM_KEYS = {"source", "name", "quantization", "quantizations", "eval", "push", "private", "conv_template"}
GLOB_CHARS = set("*?[")


class ManifestError(UserError):
    """The batch manifest cannot be read or is not what `personalize batch` takes."""


@dataclass(frozen=True)
class Variant:
    """One (source, quantization) to deliver: the unit of work, of the delivered log and of the table."""

    source: str  # a local directory (absolute) or hf://ORG/NAME[@REV]
    name: str | None  # None: the default name, decided once the source is local (as `add` does)
    quantization: str
    evaluate: bool
    push: str | None  # repo id pattern
    private: bool
    conv_template: str | None

    @property
    def is_hub(self) -> bool:
        return self.source.startswith(HF_SCHEME)


@dataclass(frozen=True)
class Manifest:
    path: Path
    base: str  # absolute dir, registry name or hf://
    quantizations: tuple[str, ...]  # of the base: every quantization any variant uses
    variants: tuple[Variant, ...]
    scales: str = "mlc"
    device: str = "cpu"
    force_base: bool = False
    force: bool = False
    package_device: str = "iphone"
    raw: dict = field(default_factory=dict, compare=False)


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}", path=path, hint="pass a YAML or JSON manifest file") from None
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest: {exc.strerror}", path=path, hint="check the path") from None
    doc = _parse(text, path)
    return parse_manifest(doc, path)


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"the manifest is not valid JSON: {exc}", path=path,
                                hint="fix the JSON (or write the manifest as YAML)") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ManifestError(f"the manifest is not valid YAML{at}: {getattr(exc, 'problem', exc)}", path=path,
                            hint="fix the YAML; see README 'Many variants' for the format") from None


def parse_manifest(doc: Any, path: Path) -> Manifest:
    path = Path(path)
    root = path.parent.resolve()
    if not isinstance(doc, dict):
        raise ManifestError("the manifest must be a mapping with 'base' and 'variants'", path=path,
                            hint="start from the example in README 'Many variants'")
    _known(doc, TOP_KEYS, path, "top level")
    base = _string(doc, "base", path, required=True)
    base = _local_or_spec(base, root)
    quants = _quantizations(doc, path, default=("q4f16_1",))
    evaluate = _bool(doc, "eval", path, True)
    push = _push(doc.get("push"), path)
    private = _bool(doc, "private", path, False)
    conv_template = doc.get("conv_template")
    items = doc.get("variants")
    if not isinstance(items, list) or not items:
        raise ManifestError("'variants' must be a non-empty list", path=path,
                            hint="list the sources: variants: [{source: ./adapters/alice}, ...]")
    variants: list[Variant] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"source": item}
        if not isinstance(item, dict):
            raise ManifestError(f"variants[{i}] must be a mapping with 'source' (or a source string)", path=path,
                                hint="e.g. - source: ./adapters/alice")
        where = f"variants[{i}]"
        _known(item, ITEM_KEYS, path, where)
        source = _string(item, "source", path, required=True, where=where)
        name = _string(item, "name", path, where=where)
        item_quants = _quantizations(item, path, default=quants, where=where)
        item_push = _push(item["push"], path, where) if "push" in item else push
        for src in _expand(source, root, path, where):
            if name is not None and src != _local_or_spec(source, root):
                raise ManifestError(f"{where}: 'name' cannot be given for a glob ({source})", path=path,
                                    hint="drop 'name' (each match is named as `add` names it) or list them one by one")
            for q in item_quants:
                variants.append(Variant(
                    source=src, name=_name_for(name, q, len(item_quants)), quantization=q,
                    evaluate=_bool(item, "eval", path, evaluate, where), push=item_push,
                    private=_bool(item, "private", path, private, where),
                    conv_template=item.get("conv_template", conv_template)))
    _check_unique(variants, path)
    all_quants = tuple(dict.fromkeys(v.quantization for v in variants))
    return Manifest(path=path, base=base, quantizations=all_quants, variants=tuple(variants),
                    scales=str(doc.get("scales", "mlc")), device=str(doc.get("device", "cpu")),
                    force_base=_bool(doc, "force_base", path, False), force=_bool(doc, "force", path, False),
                    package_device=str(doc.get("package_device", "iphone")), raw=doc)


def _known(doc: dict, keys: set[str], path: Path, where: str) -> None:
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r}", path=path,
                            hint=f"the keys are: {', '.join(sorted(keys))}")


def _string(doc: dict, key: str, path: Path, *, required: bool = False, where: str = "top level") -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{where}: '{key}' is missing", path=path, hint=f"add '{key}:' to the manifest")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: '{key}' must be a non-empty string, not {value!r}", path=path,
                            hint="quote it if YAML reads it as a number or boolean")
    return value.strip()


def _bool(doc: dict, key: str, path: Path, default: bool, where: str = "top level") -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise ManifestError(f"{where}: '{key}' must be true or false, not {value!r}", path=path, hint="use true/false")
    return value


def _quantizations(doc: dict, path: Path, default: tuple[str, ...], where: str = "top level") -> tuple[str, ...]:
    value = doc.get("quantization", doc.get("quantizations"))
    if value is None:
        return default
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ManifestError(f"{where}: 'quantization' must be a name or a list of names, not {value!r}", path=path,
                            hint="e.g. quantization: q4f16_1  or  quantization: [q4f16_1, q0f16]")
    from quantize import get_scheme

    for q in values:
        try:
            get_scheme(q)
        except UserError as exc:
            raise ManifestError(f"{where}: {exc}", path=path, hint=exc.hint) from None
    return tuple(dict.fromkeys(values))


def _push(value: Any, path: Path, where: str = "top level") -> str | None:
    if value is None or value is False:
        return None
    if not isinstance(value, str) or value.count("/") != 1:
        raise ManifestError(f"{where}: 'push' must be ORG/NAME or a pattern like \"me/{{name}}-MLC\", not {value!r}",
                            path=path, hint="placeholders: {name} {quantization} {source}; push: false turns it off")
    try:
        value.format(name="n", quantization="q", source="s")
    except (KeyError, IndexError, ValueError) as exc:
        raise ManifestError(f"{where}: push pattern {value!r} has an unknown placeholder ({exc})", path=path,
                            hint="placeholders: {name} {quantization} {source}") from None
    return value


def _local_or_spec(text: str, root: Path) -> str:
    """hf:// ids stay; an existing path (relative to the manifest) becomes absolute; else as given (a name)."""
    if text.startswith(HF_SCHEME):
        return text
    candidate = (root / Path(text).expanduser())
    return str(candidate.resolve()) if candidate.exists() else text


def _expand(source: str, root: Path, path: Path, where: str) -> list[str]:
    if source.startswith(HF_SCHEME):
        return [source]
    pattern = str(root / Path(source).expanduser())
    if GLOB_CHARS & set(source):
        hits = sorted(str(Path(p).resolve()) for p in glob.glob(pattern) if Path(p).is_dir())
        if not hits:
            raise ManifestError(f"{where}: the glob {source!r} matches no directory", path=path,
                                hint="paths are relative to the manifest's directory")
        return hits
    if not Path(pattern).is_dir():
        raise ManifestError(f"{where}: source {source!r} is not a directory ({pattern})", path=path,
                            hint="paths are relative to the manifest's directory; hub sources are hf://ORG/NAME")
    return [str(Path(pattern).resolve())]


def _name_for(name: str | None, quantization: str, n_quants: int) -> str | None:
    if name is None:
        return None
    if "{quantization}" in name:
        return name.replace("{quantization}", quantization)
    return name if n_quants == 1 else f"{name}-{quantization}"


def _check_unique(variants: list[Variant], path: Path) -> None:
    seen: dict[tuple[str, str], int] = {}
    for v in variants:
        key = (v.source, v.quantization)
        if key in seen:
            raise ManifestError(f"{v.source} in {v.quantization} is listed twice", path=path,
                                hint="list each source once per quantization")
        seen[key] = 1
    names = [v.name for v in variants if v.name]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ManifestError(f"the name {dupes[0]!r} is given to two variants", path=path, hint="give each a distinct name")
