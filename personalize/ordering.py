"""MLC's tensor order and parameter statistics, reproduced so shards are byte-identical.

MLC's HuggingFaceLoader walks the checkpoint file by file (files in order of first appearance in
the index, names in weight_map order) and emits each library parameter the first time one of its
sources is met. Record order in tensor-cache.json - and so every shard's bytes and md5 - follow it.
"""

from __future__ import annotations

from pathlib import Path

from quantize.spec import SourceParam


def loading_order(params: list[SourceParam], file_order: dict[Path, list[str]]) -> list[SourceParam]:
    users: dict[str, list[SourceParam]] = {}
    for param in params:
        for source in param.sources:
            users.setdefault(source, []).append(param)
    ordered: dict[str, SourceParam] = {}
    for names in file_order.values():
        for name in names:
            for param in users.get(name, ()):
                ordered.setdefault(param.name, param)
    return list(ordered.values())


def counted_source_params(order: list[SourceParam], file_order: dict[Path, list[str]],
                          sizes: dict[str, int], unused: set[str]) -> int:
    """MLC's `total_param_num`: sizes of every tensor in each file *load*, minus known-unused ones.

    MLC caches whole files and evicts those the next parameter does not need, so a file that is
    loaded twice is counted twice; this replays that policy without reading anything.
    """
    file_of = {name: path for path, names in file_order.items() for name in names}
    per_file = {path: sum(sizes[n] for n in names if n not in unused) for path, names in file_order.items()}
    cached: set[Path] = set()
    total = 0
    for param in order:
        required = {file_of[s] for s in param.sources}
        to_load = required - cached
        if to_load:
            cached &= required
            for path in to_load:
                total += per_file[path]
                cached.add(path)
    return total
