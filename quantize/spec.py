"""The data that crosses stage boundaries: what a library parameter is made of.

An architecture definition (in `personalize.arch`) describes every *unquantized* library
parameter as a `SourceParam`; a quantization scheme turns each into one or more
`LibraryParam`s. Keeping these as plain data lets this package stay ignorant of architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

# What a parameter is decides how it is quantized:
#   linear    - an nn.Linear weight [out, in]; group-quantized, transposed in the KN layouts
#   lm_head   - the final projection; quantized like linear (MLC's quantize_final_fc)
#   embedding - token embedding [vocab, hidden]; group-quantized, never transposed
#   norm/bias - kept in the model dtype under their own name
Role = Literal["linear", "lm_head", "embedding", "norm", "bias"]

Dim = Union[int, str]  # a str is a symbolic dimension resolved from mlc-chat-config.json ("vocab_size")

# A named value transform MLC's loader applies after the concatenation, in the *source* dtype:
#   none    - the values as they are
#   add_one - `x + 1` (gemma's RMSNorm stores 1 + w; MLC adds in the source numpy dtype, so a bf16
#             checkpoint rounds to bf16 before the cast to the model dtype)
Transform = Literal["none", "add_one"]
TRANSFORMS: tuple[str, ...] = ("none", "add_one")


@dataclass(frozen=True)
class SourceParam:
    """One unquantized library parameter and the HF tensors it is built from.

    `sources` are concatenated along axis 0 in this order (q,k,v / gate,up); a single source
    is taken as is; then `transform` is applied element-wise (so row blocks may be transformed
    one at a time). `shape` is the concrete shape; `symbolic_shape` may name a dimension.
    """

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    role: Role
    symbolic_shape: tuple[Dim, ...] | None = None
    source_rows: tuple[int, ...] | None = None  # rows each source contributes (None: one source)
    transform: Transform = "none"

    def expected_source_shape(self, index: int) -> tuple[int, ...]:
        rows = self.source_rows[index] if self.source_rows else self.shape[0]
        return (rows,) + tuple(self.shape[1:])

    @property
    def module(self) -> str:
        """The module path: the name without its trailing `.weight`/`.bias`."""
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class LibraryParam:
    """One parameter exactly as the compiled library takes it."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
