"""MLC LLM's weight quantization schemes, as data (mlc-format.md §3).

Names, group sizes, layouts and model dtypes follow mlc-llm's
`python/mlc_llm/quantization/quantization.py`; only the kinds that are pure functions of the
weights are here (no-quant and group-quant; AWQ/FT/fp8 need other inputs or a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quantize.errors import QuantizeError

Kind = Literal["no-quant", "group-quant"]
ModelDtype = Literal["float16", "bfloat16", "float32"]
Layout = Literal["NK", "KN"]


# The storage geometry of group quantization, defined once (the quantizer, the search and the
# library's kernels all derive their shapes and bit positions from these).
def codes_per_word(bits: int) -> int:
    """Codes per uint32 word: 8 for int4, 10 for int3 (its two top bits stay 0)."""
    return 32 // bits


def zero_point(bits: int) -> int:
    """max_int, the fixed zero point: MLC's codes run from 0 to 2*max_int."""
    return (1 << (bits - 1)) - 1


def num_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def num_words(k: int, bits: int, group_size: int) -> int:
    """Words per row of q_weight for a last axis of length k (tail lanes are zero bits)."""
    return num_groups(k, group_size) * group_size // codes_per_word(bits)


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme. For no-quant schemes bits/group_size are 0.

    `layout` KN (the `*_0` schemes) stores Linear weights transposed; embeddings never are.
    `quantize_embedding`/`quantize_final_fc` say whether those roles are group-quantized
    (False only in q4f16_2).
    """

    name: str
    kind: Kind
    model_dtype: ModelDtype
    bits: int = 0
    group_size: int = 0
    storage: str = "uint32"
    layout: Layout = "NK"
    quantize_embedding: bool = True
    quantize_final_fc: bool = True

    @property
    def is_quantized(self) -> bool:
        return self.kind == "group-quant"

    @property
    def is_float16(self) -> bool:
        return self.model_dtype == "float16"

    @property
    def is_bfloat16(self) -> bool:
        return self.model_dtype == "bfloat16"

    @property
    def is_float32(self) -> bool:
        return self.model_dtype == "float32"

    @property
    def elems_per_storage(self) -> int:
        return codes_per_word(self.bits)

    @property
    def max_int(self) -> int:
        return zero_point(self.bits)

    @property
    def storage_per_group(self) -> int:
        return self.group_size // self.elems_per_storage

    def num_groups(self, k: int) -> int:
        return num_groups(k, self.group_size)

    def num_storage(self, k: int) -> int:
        return num_words(k, self.bits, self.group_size)

    def quantizes(self, role: str) -> bool:
        """Whether a parameter of this role becomes q_weight/q_scale under this scheme."""
        if not self.is_quantized:
            return False
        if role == "linear":
            return True
        if role == "lm_head":
            return self.quantize_final_fc
        if role == "embedding":
            return self.quantize_embedding
        return False

    def transposes(self, role: str) -> bool:
        """KN layouts transpose q_weight and q_scale of Linear layers (lm_head included) only."""
        return self.layout == "KN" and role in ("linear", "lm_head") and self.quantizes(role)


def _group(name: str, dtype: ModelDtype, bits: int, gs: int, layout: Layout, **kw) -> Scheme:
    return Scheme(name, "group-quant", dtype, bits=bits, group_size=gs, layout=layout, **kw)


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("q0f16", "no-quant", "float16"),
        Scheme("q0bf16", "no-quant", "bfloat16"),
        Scheme("q0f32", "no-quant", "float32"),
        _group("q3f16_0", "float16", 3, 40, "KN"),
        _group("q3f16_1", "float16", 3, 40, "NK"),
        _group("q4f16_0", "float16", 4, 32, "KN"),
        _group("q4f16_1", "float16", 4, 32, "NK"),
        _group("q4f16_2", "float16", 4, 32, "NK", quantize_embedding=False, quantize_final_fc=False),
        _group("q4bf16_0", "bfloat16", 4, 32, "KN"),
        _group("q4bf16_1", "bfloat16", 4, 32, "NK"),
        _group("q4f32_1", "float32", 4, 32, "NK"),
    )
}


def get_scheme(name: str) -> Scheme:
    """The scheme called `name`; an unknown name raises QuantizeError listing the supported ones."""
    try:
        return SCHEMES[name]
    except KeyError:
        supported = ", ".join(SCHEMES)
        raise QuantizeError(
            f"unknown quantization {name!r}",
            hint=f"use one of: {supported}",
        ) from None
