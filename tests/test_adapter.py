"""ingest.adapter + ingest.merge against peft's own merge_and_unload, on tiny random models.

Every adapter is made by peft (get_peft_model + save_pretrained) with all its trainable tensors
perturbed, so a merge that ignored any part of it would differ from peft's.
"""

from __future__ import annotations

import json
import shutil
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

from ingest.adapter import AdapterError, load_adapter
from ingest.merge import merge_tensor
from tests.adapter_fixtures import (base_shapes_and_config, iter_base_tensors, load_base, make_tiny_adapter,
                                    make_tiny_base, merge_with_ingest, peft_merged_state_dict)

# float32 on both sides; only BLAS summation order may differ (in practice the results are bit-equal).
ATOL, RTOL = 1e-6, 1e-5


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter-bases")
    made = {}

    def get(arch="llama", tie=False, hidden=32):
        key = (arch, tie, hidden)
        if key not in made:
            made[key] = make_tiny_base(root / f"{arch}-{'tied' if tie else 'untied'}-{hidden}", arch=arch, tie=tie,
                                       hidden=hidden)
        return made[key]

    return get


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name: (arch, tied base, resize vocab to, LoraConfig kwargs)
CASES = {
    "plain-llama": ("llama", False, None, dict(target_modules=ALL_LINEAR)),
    "plain-qwen2": ("qwen2", True, None, dict(target_modules=ALL_LINEAR)),
    "rslora": ("llama", False, None, dict(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=4, use_rslora=True)),
    "rank-alpha-pattern": ("llama", False, None, dict(
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"layers.0.self_attn.q_proj": 2, "down_proj": 6},
        alpha_pattern={"v_proj": 3, "^model.layers.1.self_attn.q_proj": 11})),
    "dora": ("llama", False, None, dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)),
    "dora-rslora-lm_head": ("qwen2", False, None, dict(target_modules=["q_proj", "lm_head"], use_dora=True,
                                                        use_rslora=True)),
    "modules_to_save": ("llama", False, None, dict(target_modules=["q_proj"],
                                                   modules_to_save=["embed_tokens", "lm_head"])),
    "lora-embed_tokens": ("llama", False, None, dict(target_modules=["q_proj", "embed_tokens", "lm_head"])),
    "resized-vocab": ("llama", False, 70, dict(target_modules=["q_proj", "v_proj"])),
    "resized-vocab-lora-embed-head": ("llama", False, 72, dict(target_modules=["q_proj", "embed_tokens", "lm_head"])),
    "resized-vocab-lora-embed-tied": ("qwen2", True, 72, dict(target_modules=["q_proj", "embed_tokens"])),
    "resized-vocab-modules_to_save": ("llama", False, 70, dict(target_modules=["q_proj"],
                                                                modules_to_save=["embed_tokens", "lm_head"])),
    "resized-vocab-tied": ("qwen2", True, 70, dict(target_modules=["q_proj"])),
    "trainable-tokens": ("llama", False, None, dict(target_modules=["q_proj"], trainable_token_indices=[1, 5, 7])),
    "trainable-tokens-tied": ("llama", True, None, dict(target_modules=["q_proj"], trainable_token_indices=[2, 3])),
    "lora-embed-tied": ("llama", True, None, dict(target_modules=["q_proj", "embed_tokens"])),
    "modules_to_save-tied-ensure": ("llama", True, None, dict(target_modules=["q_proj"],
                                                               modules_to_save=["embed_tokens"],
                                                               ensure_weight_tying=True)),
    "bias-all": ("qwen2", False, None, dict(target_modules=["q_proj"], bias="all")),
    "bias-lora_only": ("qwen2", False, None, dict(target_modules=["q_proj"], bias="lora_only")),
    "lora_bias": ("qwen2", False, None, dict(target_modules=["q_proj", "k_proj"], lora_bias=True)),
    "fan_in_fan_out-gpt2": ("gpt2", False, None, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "dora-fan_in_fan_out-gpt2": ("gpt2", False, None, dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                            use_dora=True)),
    "fan_in_fan_out-ignored-on-linear": ("llama", False, None, dict(target_modules=["q_proj"], fan_in_fan_out=True)),
}


def _changed_by_peft(ref: dict, base: dict) -> set[str]:
    return {k for k, v in base.items() if k in ref and (ref[k].shape != v.shape or not np.array_equal(ref[k], v))}


@pytest.mark.parametrize("case", list(CASES))
def test_merge_equals_peft(case, bases, tmp_path):
    arch, tie, resize, kwargs = CASES[case]
    base_dir = bases(arch, tie)
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "adapter", resize_to=resize, **kwargs)
    ref = peft_merged_state_dict(base_dir, adapter_dir, resize_to=resize)
    ours = merge_with_ingest(base_dir, adapter_dir)
    base = dict(iter_base_tensors(base_dir))

    changed = _changed_by_peft(ref, base)
    assert changed, "the adapter changed nothing: the test would prove nothing"
    adapter = load_adapter(adapter_dir)
    adapter.check_against_base(*base_shapes_and_config(base_dir))
    assert adapter.target_hf_names() == changed

    worst = 0.0
    for name, merged in ours.items():
        assert merged.shape == ref[name].shape, name
        np.testing.assert_allclose(merged, ref[name], atol=ATOL, rtol=RTOL, err_msg=name)
        worst = max(worst, float(np.abs(merged - ref[name]).max()))
    if tie and "lm_head.weight" in ref:  # the library's head is the embedding: it must be peft's head
        np.testing.assert_allclose(ours[next(k for k in ours if k.endswith("embed_tokens.weight"))],
                                   ref["lm_head.weight"], atol=ATOL, rtol=RTOL)
    if resize:
        assert adapter.resized_vocab_size() == resize
    print(f"max abs diff vs peft [{case}]: {worst:.3g}")


def test_rank_and_alpha_patterns_give_peft_scalings(bases, tmp_path):
    from peft import PeftModel

    base_dir = bases("llama")
    kwargs = CASES["rank-alpha-pattern"][3]
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "a", **kwargs)
    adapter = load_adapter(adapter_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir))
    seen = set()
    for name, module in model.base_model.model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            edit = adapter.edit_for(f"{name}.weight")
            assert edit is not None and edit.lora.scaling == scaling["default"], name
            assert edit.lora.rank == module.r["default"], name
            seen.add((edit.lora.rank, edit.lora.scaling))
    assert len(seen) >= 4  # the patterns really produced different ranks/alphas


def test_tied_ensure_weight_tying_matches_peft_forward(bases, tmp_path):
    """peft's merge_and_unload adds the delta twice to a tied matrix (once per module); its forward does not."""
    from peft import PeftModel

    base_dir = bases("llama", tie=True)
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj", "embed_tokens", "lm_head"],
                                    ensure_weight_tying=True)
    ours = merge_with_ingest(base_dir, adapter_dir)
    adapter = load_adapter(adapter_dir)
    adapter.check_against_base(*base_shapes_and_config(base_dir))
    assert adapter.target_hf_names() == {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                                         "model.layers.1.self_attn.q_proj.weight"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(load_base(base_dir), str(adapter_dir)).eval()
    merged_model = load_base(base_dir)
    merged_model.load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()}, strict=False)
    merged_model.tie_weights()
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    with torch.no_grad():
        want, got = peft_model(ids).logits, merged_model(ids).logits
    assert not torch.equal(want, load_base(base_dir)(ids).logits)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(target_modules=["q_proj", "lm_head"]),
                                    dict(target_modules=["q_proj"], modules_to_save=["lm_head"])],
                         ids=["lora", "modules_to_save"])
def test_lm_head_change_on_tied_base_is_refused(kwargs, bases, tmp_path):
    base_dir = bases("llama", tie=True)
    adapter = load_adapter(make_tiny_adapter(base_dir, tmp_path / "a", **kwargs))
    with pytest.raises(AdapterError) as err:
        adapter.check_against_base(*base_shapes_and_config(base_dir))
    assert "lm_head" in str(err.value) and "tie" in str(err.value)
    assert "tied" in err.value.hint or "tie" in err.value.hint
    assert err.value.path == str(adapter.weights_path)


def test_ia3_is_refused(bases, tmp_path):
    from peft import IA3Config, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(load_base(bases("llama")), IA3Config(target_modules=["q_proj", "down_proj"],
                                                                    feedforward_modules=["down_proj"]))
        model.save_pretrained(tmp_path / "ia3")
    with pytest.raises(AdapterError, match="IA3 is not supported") as err:
        load_adapter(tmp_path / "ia3")
    assert "merge_and_unload" in err.value.hint


def test_prompt_learning_is_refused_with_its_own_hint(bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"])
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["peft_type"] = "PREFIX_TUNING"
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="not supported") as err:
        load_adapter(adapter_dir)
    assert "virtual tokens" in err.value.hint


@pytest.mark.parametrize("field,value", [("layer_replication", [[0, 2], [1, 2]]),
                                         ("target_parameters", ["mlp.experts.down_proj"]),
                                         ("init_lora_weights", "pissa")])
def test_unmergeable_options_are_refused(field, value, bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"])
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config[field] = value
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=field) as err:
        load_adapter(adapter_dir)
    assert err.value.hint


def test_shape_mismatch_names_the_tensor(bases, tmp_path):
    wide = bases("llama", hidden=48)
    adapter = load_adapter(make_tiny_adapter(wide, tmp_path / "a", target_modules=["q_proj", "v_proj"]))
    with pytest.raises(AdapterError) as err:
        adapter.check_against_base(*base_shapes_and_config(bases("llama", hidden=32)))
    assert "base_model.model.model.layers.0.self_attn" in str(err.value)  # names the adapter tensor
    assert "model.layers.0.self_attn" in str(err.value)
    assert err.value.path == str(adapter.weights_path) and err.value.hint


def test_modules_to_save_shape_mismatch_names_the_tensor(bases, tmp_path):
    wide = bases("llama", hidden=48)
    adapter = load_adapter(make_tiny_adapter(wide, tmp_path / "a", target_modules=["q_proj"],
                                             modules_to_save=["lm_head"]))
    with pytest.raises(AdapterError, match="lm_head"):
        adapter.check_against_base(*base_shapes_and_config(bases("llama", hidden=32)))


def test_resized_vocab_without_resized_lm_head_is_refused(bases, tmp_path):
    """LoRA on embed_tokens only, after a resize: peft saves the embedding but not the new lm_head rows."""
    base_dir = bases("llama")
    adapter = load_adapter(make_tiny_adapter(base_dir, tmp_path / "a", resize_to=72,
                                             target_modules=["q_proj", "embed_tokens"]))
    with pytest.raises(AdapterError, match="lm_head.weight") as err:
        adapter.check_against_base(*base_shapes_and_config(base_dir))
    assert "modules_to_save" in err.value.hint


def test_lora_bias_without_base_bias_is_refused(bases, tmp_path):
    base_dir = bases("llama")
    adapter = load_adapter(make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj"], lora_bias=True))
    with pytest.raises(AdapterError, match=r"q_proj\.bias") as err:
        adapter.check_against_base(*base_shapes_and_config(base_dir))
    assert "bias" in err.value.hint


def test_dora_on_embeddings_is_refused(bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj", "embed_tokens"],
                                    use_dora=True)
    with pytest.raises(AdapterError, match="DoRA on the embedding"):
        load_adapter(adapter_dir)


def test_config_rank_disagreeing_with_weights_is_refused(bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"], r=4)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["r"] = 8
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="rank 4"):
        load_adapter(adapter_dir)


def test_bin_adapter_merges_like_safetensors(bases, tmp_path):
    base_dir = bases("llama")
    kwargs = dict(target_modules=["q_proj", "down_proj"], modules_to_save=["lm_head"], use_dora=True)
    st = make_tiny_adapter(base_dir, tmp_path / "st", **kwargs)
    binary = make_tiny_adapter(base_dir, tmp_path / "bin", safe_serialization=False, **kwargs)
    assert (binary / "adapter_model.bin").is_file() and not (binary / "adapter_model.safetensors").exists()
    ours_bin, ours_st = merge_with_ingest(base_dir, binary), merge_with_ingest(base_dir, st)
    ref = peft_merged_state_dict(base_dir, binary)
    for name in ours_bin:
        np.testing.assert_array_equal(ours_bin[name], ours_st[name])
        np.testing.assert_allclose(ours_bin[name], ref[name], atol=ATOL, rtol=RTOL)


def test_untouched_tensors_pass_through_and_bf16_bases_merge_in_float32(bases, tmp_path):
    base_dir = bases("llama")
    adapter = load_adapter(make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj"]))
    base = dict(iter_base_tensors(base_dir))
    untouched = base["model.layers.0.mlp.down_proj.weight"]
    assert merge_tensor(adapter, "model.layers.0.mlp.down_proj.weight", untouched) is untouched

    name = "model.layers.0.self_attn.q_proj.weight"
    bf16 = base[name].astype(ml_dtypes.bfloat16)
    merged = merge_tensor(adapter, name, bf16)
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(merged, merge_tensor(adapter, name, bf16.astype(np.float32)))
    assert not np.array_equal(merged, bf16.astype(np.float32))


def test_adapter_metadata(bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"])
    adapter = load_adapter(adapter_dir)
    assert adapter.peft_type == "LORA"
    assert adapter.base_model_name_or_path == str(bases("llama"))
    import hashlib

    assert adapter.config_sha256 == hashlib.sha256((adapter_dir / "adapter_config.json").read_bytes()).hexdigest()
    assert adapter.resized_vocab_size() is None


def test_missing_files_are_user_errors(bases, tmp_path):
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapter(tmp_path)
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"])
    shutil.move(adapter_dir / "adapter_model.safetensors", tmp_path / "elsewhere.safetensors")
    with pytest.raises(AdapterError, match="adapter_model") as err:
        load_adapter(adapter_dir)
    assert err.value.hint


def _rewrite_keys(adapter_dir, rename):
    """Rewrite adapter_model.safetensors with renamed (or extra) keys, as other tools/old peft save them."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    save_file(dict(rename(tensors)), str(path))


def test_older_key_layouts_merge_the_same(bases, tmp_path):
    """modules_to_save.<adapter>.weight, lora_A.<adapter>.weight and original_module copies."""
    base_dir = bases("llama")
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj", "embed_tokens"],
                                    modules_to_save=["lm_head"], use_dora=False)
    want = merge_with_ingest(base_dir, adapter_dir)
    base = dict(iter_base_tensors(base_dir))

    def rename(tensors):
        for key, value in tensors.items():
            if key == "base_model.model.lm_head.weight":
                yield "base_model.model.lm_head.modules_to_save.default.weight", value
                yield "base_model.model.lm_head.original_module.weight", torch.from_numpy(base["lm_head.weight"])
            else:
                yield key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                    ".lora_embedding_B", ".lora_embedding_B.default"), value

    _rewrite_keys(adapter_dir, rename)
    got = merge_with_ingest(base_dir, adapter_dir)
    assert not np.array_equal(got["lm_head.weight"], base["lm_head.weight"])
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_adapter_saved_on_a_bare_decoder_maps_to_causal_lm_names(bases, tmp_path):
    base_dir = bases("llama")
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj", "v_proj"])
    want = merge_with_ingest(base_dir, adapter_dir)
    _rewrite_keys(adapter_dir, lambda t: ((k.replace("base_model.model.model.", "base_model.model."), v)
                                          for k, v in t.items()))
    assert all(not n.startswith("model.") for n in load_adapter(adapter_dir).target_hf_names())
    got = merge_with_ingest(base_dir, adapter_dir)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_foreign_tensors_are_refused(bases, tmp_path):
    adapter_dir = make_tiny_adapter(bases("llama"), tmp_path / "a", target_modules=["q_proj"])
    _rewrite_keys(adapter_dir, lambda t: list(t.items()) + [
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_E", torch.ones(4, 1))])
    with pytest.raises(AdapterError, match="lora_E") as err:
        load_adapter(adapter_dir)
    assert err.value.path.endswith("adapter_model.safetensors")


def test_bf16_adapter_merges_in_float32_like_peft(bases, tmp_path):
    """Adapters saved in bf16 (the usual mixed-precision output) are widened, never merged in bf16."""
    base_dir = bases("llama")
    adapter_dir = make_tiny_adapter(base_dir, tmp_path / "a", target_modules=["q_proj", "down_proj"],
                                    modules_to_save=["lm_head"], use_dora=True)
    _rewrite_keys(adapter_dir, lambda t: ((k, v.to(torch.bfloat16)) for k, v in t.items()))
    ours = merge_with_ingest(base_dir, adapter_dir)
    ref = peft_merged_state_dict(base_dir, adapter_dir)
    for name, merged in ours.items():
        assert merged.dtype == np.float32
        np.testing.assert_allclose(merged, ref[name], atol=ATOL, rtol=RTOL, err_msg=name)
