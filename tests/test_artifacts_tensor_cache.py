"""The tensor-cache writer must equal tvm.contrib.tvmjs.dump_tensor_cache byte for byte."""

from __future__ import annotations

import hashlib
import json

import ml_dtypes
import numpy as np
import pytest

from artifacts.errors import TensorCacheError
from artifacts.tensor_cache import (
    TensorCache,
    TensorCacheWriter,
    decode_bf16_to_f32,
    encode_f32_to_bf16,
    iter_tensors,
    load_tensor,
    param_stats,
    read_tensor_cache,
)

from tests import oracles

tvmjs = pytest.importorskip("tvm.contrib.tvmjs")

CAP_MB = 2**-6  # 16 KiB shards: many shards, many out-of-band tensors, cheap to run
CAP_BYTES = int(CAP_MB * 2**20)

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.uint32, np.int8, np.uint8, ml_dtypes.float8_e4m3fn]


def random_stream(seed: int, count: int):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        dtype = DTYPES[rng.integers(len(DTYPES))]
        itemsize = np.dtype(dtype).itemsize
        # sizes from tiny to over the cap, so both the >= test and out-of-band shards trigger
        nbytes = int(rng.choice([rng.integers(1, 512), rng.integers(512, CAP_BYTES // 2),
                                 rng.integers(CAP_BYTES // 2 - 64, CAP_BYTES // 2 + 64),
                                 rng.integers(CAP_BYTES // 2, 2 * CAP_BYTES)]))
        numel = max(1, nbytes // itemsize)
        shape = (numel,) if rng.random() < 0.5 or numel < 4 else (numel // 4, 4) if numel % 4 == 0 else (numel,)
        if dtype in (np.uint32, np.int8, np.uint8):
            arr = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=shape, dtype=dtype)
        else:
            arr = (rng.standard_normal(shape) * 10).astype(np.float32)
            if dtype == np.float32 and arr.size > 8:
                # out-of-range values take the truncation branch of the bf16 encoding
                arr.flat[:6] = [np.inf, -np.inf, np.nan, 3.3999e38, -3.4e38, np.finfo(np.float32).max]
            arr = arr.astype(dtype)
        out.append((f"layer.{i}.w", arr))
    return out


def ours(tmp_path, stream, metadata):
    w = TensorCacheWriter(tmp_path, shard_cap_bytes=CAP_BYTES)
    for name, arr in stream:
        w.add(name, arr)
    doc = w.finish(metadata)
    return w, doc


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_byte_identical_to_tvmjs(tmp_path, seed):
    stream = random_stream(seed, 60)
    meta = param_stats(len(stream), sum(a.nbytes for _, a in stream), sum(a.size for _, a in stream) + 7)
    ref_dir, our_dir = tmp_path / "ref", tmp_path / "ours"
    tvmjs.dump_tensor_cache(iter(stream), str(ref_dir), meta_data=lambda: meta,
                            shard_cap_mb=CAP_MB, show_progress=False)
    writer, doc = ours(our_dir, stream, meta)

    ref_files = sorted(p.name for p in ref_dir.iterdir())
    our_files = sorted(p.name for p in our_dir.iterdir() if p.name != "ndarray-cache.json")
    assert our_files == ref_files
    assert len([f for f in ref_files if f.endswith(".bin")]) > 5
    for name in ref_files:
        assert (our_dir / name).read_bytes() == (ref_dir / name).read_bytes(), name
    assert (our_dir / "ndarray-cache.json").read_bytes() == (ref_dir / "tensor-cache.json").read_bytes()
    # out-of-band shards exist, so shard numbers are out of tensor order somewhere
    first_names = [int(s["records"][0]["name"].split(".")[1]) for s in doc["records"]]
    assert first_names != sorted(first_names)
    # hashes computed while writing equal hashes of the files
    for name, digest in writer.file_hashes.items():
        assert hashlib.sha256((our_dir / name).read_bytes()).hexdigest() == digest
    assert writer.bytes_written == sum((our_dir / n).stat().st_size for n in writer.file_hashes)
    assert not list(our_dir.glob(".*.tmp"))


def test_metadata_matches_mlc_callback(tmp_path):
    stream = [("a", np.zeros((3, 4), np.float32)), ("b", np.zeros((5,), np.uint32))]
    w, doc = ours(tmp_path, stream, {})
    meta = param_stats(w.param_count, w.param_bytes, 40)
    assert meta == {"ParamSize": 2, "ParamBytes": 68.0, "BitsPerParam": 68.0 * 8.0 / 40}
    assert isinstance(meta["ParamBytes"], float)
    text = json.dumps({"metadata": meta}, indent=4)
    assert '"ParamBytes": 68.0' in text


def test_roundtrip_decode(tmp_path):
    stream = random_stream(7, 25)
    ours(tmp_path, stream, {"ParamSize": 25})
    got = dict(iter_tensors(tmp_path))
    assert sorted(got) == sorted(n for n, _ in stream)  # record order follows shards, not the stream
    for name, arr in stream:
        want = arr
        if arr.dtype == np.float32:
            want = decode_bf16_to_f32(encode_f32_to_bf16(arr)).reshape(arr.shape)
        np.testing.assert_array_equal(got[name].view(np.uint8), np.ascontiguousarray(want).view(np.uint8))
    np.testing.assert_array_equal(load_tensor(tmp_path, stream[3][0]), got[stream[3][0]])
    assert read_tensor_cache(tmp_path)["metadata"] == {"ParamSize": 25}


def test_bf16_encoding_rule():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, -np.inf, 3.3999e38, 1e-40], np.float32)
    bits = encode_f32_to_bf16(x)
    # ties to even in range: 1+2^-8 is a tie that rounds down to 1.0, 1+3*2^-8 rounds up
    assert decode_bf16_to_f32(bits)[:4].tolist() == [1.0, 1.0, 1.015625, -2.5]
    # out of range: truncation (inf stays inf, 3.3999e38 truncates rather than rounding to inf)
    assert bits[4] == 0x7F80 and bits[5] == 0xFF80
    assert bits[6] == (x[6:7].view(np.uint32)[0] >> 16)


def test_duplicate_name_rejected(tmp_path):
    w = TensorCacheWriter(tmp_path)
    w.add("x", np.zeros(2, np.float16))
    with pytest.raises(TensorCacheError, match="duplicate"):
        w.add("x", np.zeros(2, np.float16))


def test_tensor_cache_reader_against_the_oracle(tmp_path):
    """TensorCache: records, shards, byte counts and every tensor as the spec-written oracle decodes it."""
    stream = random_stream(11, 20)
    w, doc = ours(tmp_path, stream, {"ParamSize": 20})
    cache = TensorCache(tmp_path)
    want = oracles.read_tensor_cache(tmp_path)
    assert len(cache) == 20 and set(cache.names) == set(want) and "layer.0.w" in cache
    assert cache.shard_files == [s["dataPath"] for s in doc["records"]]
    assert cache.stored_bytes == w.bytes_written == sum((tmp_path / f).stat().st_size for f in cache.shard_files)
    assert cache.param_bytes == w.param_bytes == sum(a.size * a.dtype.itemsize for _, a in stream)
    for name, arr in cache.items():
        assert arr.dtype == want[name].dtype and arr.shape == want[name].shape
        np.testing.assert_array_equal(arr.view(np.uint8), want[name].view(np.uint8))
    np.testing.assert_array_equal(cache.load("layer.5.w").view(np.uint8), want["layer.5.w"].view(np.uint8))


def test_tensor_cache_reader_errors_are_typed_and_name_the_file(tmp_path):
    ours(tmp_path, random_stream(3, 6), {})
    with pytest.raises(TensorCacheError, match="no tensor named") as err:
        TensorCache(tmp_path).load("nope")
    assert str(err.value.path).endswith("tensor-cache.json")
    shard = tmp_path / "params_shard_0.bin"
    shard.write_bytes(shard.read_bytes()[:3])
    with pytest.raises(TensorCacheError, match="shorter") as err:
        dict(TensorCache(tmp_path).items())
    assert err.value.path == str(shard)
    (tmp_path / "tensor-cache.json").write_text("[1, 2]")
    with pytest.raises(TensorCacheError, match="not a JSON object"):
        TensorCache(tmp_path)
    (tmp_path / "tensor-cache.json").unlink()
    (tmp_path / "ndarray-cache.json").unlink()
    with pytest.raises(TensorCacheError, match="no tensor-cache.json"):
        TensorCache(tmp_path)


def test_legacy_ndarray_cache_is_read(tmp_path):
    stream = random_stream(5, 4)
    ours(tmp_path, stream, {})
    (tmp_path / "tensor-cache.json").unlink()
    cache = TensorCache(tmp_path)
    assert cache.path.name == "ndarray-cache.json" and len(cache) == 4
