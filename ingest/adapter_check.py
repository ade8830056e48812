"""An adapter's plan against its base: settle the layout questions that need the base, then refuse
any edit whose tensors do not fit (naming the first mismatching tensor)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .adapter_plan import VOCAB_MODULES, FailFn, TensorEdit, module_leaf, same_tensor
from .weights import TensorFile

# Module classes that store weights as [in, out] (transformers' Conv1D); peft forces
# fan_in_fan_out=False on nn.Linear, so the flag only matters for these architectures.
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}

Shapes = dict[str, tuple[int, ...]]
WarnFn = Callable[[str], None]


def check_against_base(edits: dict[str, TensorEdit], weights: TensorFile, adapter_config: dict, base_shapes: Shapes,
                       base_config: dict, warn: WarnFn, fail: FailFn) -> dict[str, TensorEdit]:
    """The plan in the base's names, or an error naming the first adapter tensor that does not fit.

    Also settles two layout questions that need the base: a checkpoint without the `model.`
    prefix (adapter saved on a bare LlamaModel), and lm_head on a tied-embedding base.
    """
    edits = remap_to_base_names(edits, base_shapes)
    edits = settle_fan_in_fan_out(edits, adapter_config, base_config, warn)
    edits = settle_tied_head(edits, weights, base_shapes, base_config, warn, fail)
    for name in sorted(edits):
        check_edit(edits[name], weights, base_shapes, fail)
    check_vocab_consistent(edits, resized_vocab_size(edits, weights, base_config.get("vocab_size"), fail),
                           base_shapes, fail)
    return edits


def resized_vocab_size(edits: dict[str, TensorEdit], weights: TensorFile, base_vocab: int | None,
                       fail: FailFn) -> int | None:
    """The vocab size the adapter's embedding/head tensors carry when it differs from `base_vocab`
    (any size they carry when `base_vocab` is None; None when they carry none)."""
    sizes = {weights.shape(e.replacement_key)[0] for e in edits.values()
             if e.replacement_key and e.changes_vocab_dim and e.hf_name.endswith(".weight")
             and weights.shape(e.replacement_key)}
    sizes |= {weights.shape(e.lora.a_key)[1] for e in edits.values()
              if e.lora is not None and e.lora.embedding and len(weights.shape(e.lora.a_key)) == 2}
    if not sizes:
        return None
    if len(sizes) > 1:
        raise fail(f"embedding and lm_head replacements disagree on the vocab size: {sorted(sizes)}",
                   "the adapter is inconsistent; save it again after resize_token_embeddings")
    (size,) = sizes
    return size if base_vocab is None or size != base_vocab else None


def check_vocab_consistent(edits: dict[str, TensorEdit], new_vocab: int | None, base_shapes: Shapes,
                           fail: FailFn) -> None:
    """A resized vocab must reach every vocab-sized base tensor, or the model is half resized."""
    if new_vocab is None:
        return
    for name, shape in sorted(base_shapes.items()):
        if module_leaf(name.rsplit(".", 1)[0]) not in VOCAB_MODULES or not name.endswith(".weight"):
            continue
        edit = edits.get(name)
        if edit is None or (edit.replacement_key is None and not (edit.lora and edit.lora.embedding)):
            raise fail(
                f"the adapter resizes the vocabulary to {new_vocab} but carries no {name} of that size "
                f"(the base has {shape[0]} rows)",
                "peft did not save the resized tensor, so its new rows are lost; save the adapter again "
                f"with save_embedding_layers=True or with '{module_leaf(name.rsplit('.', 1)[0])}' in "
                "modules_to_save")


def remap_to_base_names(edits: dict[str, TensorEdit], base_shapes: Shapes) -> dict[str, TensorEdit]:
    """An adapter saved on a bare decoder (LlamaModel) lacks the `model.` prefix of *ForCausalLM."""
    def base_name(name: str) -> str:
        return f"model.{name}" if name not in base_shapes and f"model.{name}" in base_shapes else name

    return {base_name(n): replace(e, hf_name=base_name(n)) for n, e in edits.items()}


def settle_fan_in_fan_out(edits: dict[str, TensorEdit], adapter_config: dict, base_config: dict,
                          warn: WarnFn) -> dict[str, TensorEdit]:
    if not adapter_config.get("fan_in_fan_out") or base_config.get("model_type") in CONV1D_MODEL_TYPES:
        return edits
    # peft resets fan_in_fan_out to False for nn.Linear targets (with a warning); do the same.
    warn("fan_in_fan_out=True is ignored for nn.Linear layers, as peft does")
    return {name: replace(e, lora=replace(e.lora, fan_in_fan_out=False))
            if e.lora is not None and e.lora.fan_in_fan_out else e for name, e in edits.items()}


def settle_tied_head(edits: dict[str, TensorEdit], weights: TensorFile, base_shapes: Shapes, base_config: dict,
                     warn: WarnFn, fail: FailFn) -> dict[str, TensorEdit]:
    head = next((n for n in edits if n.endswith("lm_head.weight")), None)
    embed = next((n for n in edits if n.endswith("embed_tokens.weight")), None)
    tied = bool(base_config.get("tie_word_embeddings")) or (
        head is not None and head not in base_shapes and any(n.endswith("embed_tokens.weight") for n in base_shapes))
    if embed is not None and tied and head is None:
        warn("the base ties lm_head to embed_tokens: the embedding change also changes the "
             "output head, as in peft's merge_and_unload")
    if head is None or not tied:
        return edits
    if embed is not None and _same_effect(edits[head], edits[embed], weights):
        # A tied model trained with resize_token_embeddings / ensure_weight_tying saves the same
        # tensor twice; the library's head is the embedding, so the lm_head copy adds nothing.
        return {n: e for n, e in edits.items() if n != head}
    raise fail(
        f"the adapter changes {head} but the base ties lm_head to the embedding "
        "(tie_word_embeddings=true)",
        "the fixed library computes logits with the embedding matrix, so a separate lm_head cannot be "
        "expressed; retrain without lm_head in target_modules/modules_to_save (or with "
        "ensure_weight_tying=True), or merge with peft and convert the result as an untied full fine-tune")


def _same_effect(head: TensorEdit, embed: TensorEdit, weights: TensorFile) -> bool:
    """True when the lm_head edit is exactly the embedding edit (what a tied model saves)."""
    if (head.lora is not None and head.lora.magnitude_key) or head.bias_delta:
        return False
    if (head.replacement_key is None) != (embed.replacement_key is None):
        return False
    if head.replacement_key and not same_tensor(weights, head.replacement_key, embed.replacement_key):
        return False
    if (head.lora is None) != (embed.lora is None):
        return False
    if head.lora is not None:
        if not embed.lora.embedding or head.lora.scaling != embed.lora.scaling:
            return False
        # peft ties lm_head's lora_A to embed's lora_embedding_B.T and lora_B to lora_embedding_A.T
        if not (_fits_transposed(weights, head.lora.a_key, embed.lora.b_key)
                and _fits_transposed(weights, head.lora.b_key, embed.lora.a_key)):
            return False
    return head.token_rows is None  # peft ties token rows itself and saves them once, on the embedding


def _fits_transposed(weights: TensorFile, a: str, b: str) -> bool:
    return weights.shape(a) == weights.shape(b)[::-1] and same_tensor(weights, a, b, transpose=True)


def check_edit(e: TensorEdit, weights: TensorFile, base_shapes: Shapes, fail: FailFn) -> None:
    if e.hf_name not in base_shapes:
        what = "bias" if e.hf_name.endswith(".bias") else "tensor"
        hint = ("the base has no bias here, so a trained bias (bias='all'/'lora_only' or lora_bias=True) "
                "cannot be expressed; retrain with bias='none' and lora_bias=False"
                if what == "bias" else "check that --base is the model the adapter was trained on")
        raise fail(f"the adapter changes {e.hf_name}, a {what} the base model does not have", hint)
    base = base_shapes[e.hf_name]
    shape = base
    if e.replacement_key:
        got = weights.shape(e.replacement_key)
        fits = got == base or (e.changes_vocab_dim and len(got) == len(base) and got[1:] == base[1:])
        if not fits:
            raise _shape_error(e.replacement_key, got, base, e.hf_name, fail)
        shape = got
    if e.lora is not None:
        a, b = weights.shape(e.lora.a_key), weights.shape(e.lora.b_key)
        # Which base dimension each factor spans: lora_A its input side, lora_B its output side.
        # nn.Linear [out, in]; Conv1D (fan_in_fan_out) [in, out]; embedding [vocab, hidden] with
        # lora_embedding_A [r, vocab] and lora_embedding_B [hidden, r].
        a_dim, b_dim = (0, 1) if (e.lora.embedding or e.lora.fan_in_fan_out) else (1, 0)
        for key, got, dim, rank_axis in ((e.lora.a_key, a, a_dim, 0), (e.lora.b_key, b, b_dim, 1)):
            other = 1 - rank_axis
            if len(got) != 2 or len(shape) != 2 or got[other] != shape[dim] or got[rank_axis] != e.lora.rank:
                raise fail(
                    f"adapter tensor {key} has shape {got}, which does not fit base tensor {e.hf_name} "
                    f"{shape} at rank {e.lora.rank}",
                    "the adapter was trained on a different model (other hidden size or vocab); "
                    "pass the right --base")
        if e.lora.magnitude_key:
            m = weights.shape(e.lora.magnitude_key)
            out = shape[1] if e.lora.fan_in_fan_out else shape[0]
            if m != (out,):
                raise _shape_error(e.lora.magnitude_key, m, (out,), e.hf_name, fail)
    if e.bias_delta:
        got = weights.shape(e.bias_delta[0])
        if got != base:
            raise _shape_error(e.bias_delta[0], got, base, e.hf_name, fail)
    if e.token_rows:
        key, idx = e.token_rows
        got = weights.shape(key)
        if len(shape) != 2 or got != (len(idx), shape[1]) or (idx and max(idx) >= shape[0]):
            raise fail(f"adapter tensor {key} {got} does not fit {e.hf_name} {shape} with "
                       f"{len(idx)} trainable token indices (max {max(idx) if idx else None})",
                       "pass the base the adapter was trained on")


def _shape_error(key: str, got: tuple, want: tuple, hf_name: str, fail: FailFn):
    return fail(f"adapter tensor {key} has shape {got}, the base tensor {hf_name} needs {want}",
                "the adapter was trained on a different model (other hidden size?); pass the right --base")
