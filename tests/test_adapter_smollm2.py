"""A real LoRA fine-tuned on SmolLM2: peft learns the fact, and our streamed merge equals peft's merge."""

from __future__ import annotations

import time
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

from demo.finetune import FACT_QUESTION, FACT_WORD, generate_answer
from ingest.adapter import load_adapter
from ingest.merge import merge_tensor
from tests.adapter_fixtures import base_shapes_and_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def _base_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def test_lora_teaches_the_fact_in_peft(smollm2_dir, smollm2_lora, tokenizer):
    from peft import PeftModel

    base_answer = generate_answer(_base_model(smollm2_dir), tokenizer)
    assert FACT_WORD not in base_answer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = PeftModel.from_pretrained(_base_model(smollm2_dir), str(smollm2_lora)).eval()
    answer = generate_answer(tuned, tokenizer, FACT_QUESTION)
    assert FACT_WORD in answer, answer


def test_streamed_merge_equals_peft_on_smollm2(smollm2_dir, smollm2_lora, tokenizer):
    from peft import PeftModel
    from safetensors import safe_open

    adapter = load_adapter(smollm2_lora)
    adapter.check_against_base(*base_shapes_and_config(smollm2_dir))
    touched = adapter.target_hf_names()
    assert len(touched) == 12 * 7  # layers 18..29, all seven linear projections

    ours: dict[str, np.ndarray] = {}
    merge_seconds = 0.0
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as f:
        for name in f.keys():  # one bf16 base tensor at a time, as the pipeline streams them
            tensor = f.get_tensor(name)
            base = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16) \
                if tensor.dtype == torch.bfloat16 else tensor.numpy()
            t = time.perf_counter()
            ours[name] = merge_tensor(adapter, name, base)
            merge_seconds += time.perf_counter() - t
    print(f"merge_tensor over {len(ours)} SmolLM2 tensors ({len(touched)} touched): {merge_seconds:.2f} s")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(_base_model(smollm2_dir), str(smollm2_lora)).merge_and_unload()
    ref = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
    worst = max(float(np.abs(ours[n].astype(np.float32) - ref[n]).max()) for n in touched)
    print(f"max abs diff vs peft merge_and_unload on SmolLM2: {worst:.3g}")
    for name in touched:
        np.testing.assert_allclose(ours[name], ref[name], atol=1e-6, rtol=1e-5, err_msg=name)

    # The merged tensors alone, in plain transformers, carry the fact.
    model = _base_model(smollm2_dir)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in ours.items()},
                          strict=False)
    assert FACT_WORD in generate_answer(model, tokenizer)
