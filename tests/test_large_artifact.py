"""An artifact larger than one 32 MiB shard, end to end through the CLI.

A random untied llama (vocab 36000 x hidden 512: each of embed_tokens and lm_head is 35.2 MiB as
bf16-encoded float32, so larger than the shard cap; 3 layers of 13.5 MiB, so the regular shard fills
and is flushed too) goes through `personalize add --no-eval` and `personalize verify`. The shards are
checked three ways: against MLC's packing rule (mlc-format.md §2.4) applied here to the tensors' sizes
in MLC's loader order; byte for byte against apache-tvm's own `tvmjs.dump_tensor_cache` on the
reference stream (tests/test_convert_exact.py); and decoded by the independent oracle. Then the
logits through our library equal transformers' (q0f32, 1e-4 relative).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.oracles import hf_logits, hf_state_from_artifact, read_tensor_cache, rel_err
from tests.test_convert_exact import assert_same_tensor_cache, reference_stream, write_oracle
from tests.tiny_models import add_chatml_tokenizer, make_tiny_model

SHARD_CAP = 32 * 2 ** 20
LARGE = dict(vocab_size=36000, hidden_size=512, intermediate_size=4096, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
IDS = [5, 17, 99, 3, 250, 11, 42, 7, 35999, 1, 20000, 128]


def mlc_shard_layout(stream: list[tuple[str, int]]) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """MLC's packing (tvmjs TensorCacheShardingManager, mlc-format.md §2.4) of (name, nbytes) in stream
    order: [(dataPath, [(name, byteOffset, nbytes)])] in the order tensor-cache.json lists the shards."""
    shards, pending, pending_bytes = [], [], 0

    def write(records):
        shards.append((f"params_shard_{len(shards)}.bin", records))

    for name, nbytes in stream:
        if pending_bytes + nbytes >= SHARD_CAP:
            if 2 * nbytes >= SHARD_CAP:  # out of band: a shard of its own, written at once
                write([(name, 0, nbytes)])
                continue
            if pending:
                write(pending)
                pending, pending_bytes = [], 0
        pending.append((name, pending_bytes, nbytes))
        pending_bytes += nbytes
    if pending:
        write(pending)
    return shards


def stored_nbytes(shape: list[int], dtype: str) -> int:
    """Bytes on disk: float32 is written as bf16 (f32-to-bf16), everything else as is."""
    return int(np.prod(shape)) * (2 if dtype == "float32" else np.dtype(dtype).itemsize)


@pytest.fixture(scope="module")
def large_llama(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("large") / "large-llama", "llama", tied=False, seed=11,
                        scale=0.05, **LARGE)
    add_chatml_tokenizer(d)
    return d


def test_multi_shard_artifact_end_to_end(home, large_llama, tmp_path):
    out = tmp_path / "large-q0f32"
    code, stdout, stderr = run_cli("add", str(large_llama), "--quantization", "q0f32", "--output", str(out),
                                   "--no-eval")
    assert code == 0, stdout + stderr
    code, stdout, stderr = run_cli("verify", str(out))
    assert code == 0, stdout + stderr

    doc = json.loads((out / "tensor-cache.json").read_text())
    shards = doc["records"]
    # MLC's loader order (mlc-format.md §1.4) and sizes, from the source model, not from our records
    stream = [(name, stored_nbytes(a.shape, str(a.dtype))) for name, a in reference_stream(large_llama, "q0f32")]
    for s in shards:
        for r in s["records"]:
            assert r["nbytes"] == stored_nbytes(r["shape"], r["dtype"]), r
    ours = [(s["dataPath"], [(r["name"], r["byteOffset"], r["nbytes"]) for r in s["records"]]) for s in shards]
    assert ours == mlc_shard_layout(stream)
    for s in shards:
        assert (out / s["dataPath"]).stat().st_size == s["nbytes"] == sum(r["nbytes"] for r in s["records"])
    big = [s for s in shards if s["nbytes"] > SHARD_CAP]
    assert sorted(r["name"] for s in big for r in s["records"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all(len(s["records"]) == 1 for s in big)  # each out-of-band tensor alone in its shard
    regular = [s for s in shards if s not in big]
    assert len(regular) >= 2 and all(s["nbytes"] < SHARD_CAP for s in regular)  # a regular shard was flushed

    # byte for byte what MLC's convert_weight writes (tvmjs.dump_tensor_cache on MLC's loader stream)
    oracle = tmp_path / "oracle"
    write_oracle(large_llama, "q0f32", oracle)
    assert_same_tensor_cache(out, oracle)

    from personalize.runtime import load

    hf_config = json.loads((large_llama / "config.json").read_text())
    state = hf_state_from_artifact(out, hf_config)
    assert set(read_tensor_cache(out)) == {r["name"] for s in shards for r in s["records"]}
    got = load(out).logits(IDS)
    ref = hf_logits(large_llama, IDS, state)
    err = rel_err(got, ref)
    print(f"\nlarge q0f32: {len(shards)} shards {[(s['dataPath'], s['nbytes'], len(s['records'])) for s in shards]}; "
          f"max rel err {err:.2e}")
    assert got.shape == (len(IDS), LARGE["vocab_size"])
    assert err < 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert rel_err(ref, hf_logits(large_llama, IDS)) == 0.0  # bf16 source: q0f32 stores it exactly
