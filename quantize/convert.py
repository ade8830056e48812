"""From unquantized library parameters to what the compiled library takes: names, shapes, arrays.

`library_params` is the contract (the parameter list a library is compiled against);
`quantize_param` produces exactly those arrays for one parameter, so the two cannot drift.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from quantize.errors import NonFiniteWeightError, QuantizeError
from quantize.schemes import Scheme
from quantize.spec import Dim, LibraryParam, SourceParam

_SOURCE_DTYPES = ("float32", "float16", "bfloat16")

# How per-group scales are chosen (quantize/search.py): "mlc" = absmax/max_int, bit-exact with
# MLC's converter; "mse" = searched for the smallest squared error (clips extremes); "range" =
# the smallest scale that clips nothing using the top code 2**bits-1 too (+8 for int4), which
# MLC's converter never writes but every MLC dequant kernel decodes. Same format, same library.
ScaleMode = Literal["mlc", "mse", "range"]
SCALE_MODES: tuple[str, ...] = ("mlc", "mse", "range")


def check_scale_mode(scales: str) -> None:
    """Raise QuantizeError unless `scales` is one of SCALE_MODES."""
    if scales not in SCALE_MODES:
        raise QuantizeError(f"unknown scale mode {scales!r}", hint=f"use one of: {', '.join(SCALE_MODES)}")


def assemble_source(param: SourceParam, arrays: list[np.ndarray]) -> np.ndarray:
    """The unquantized weight of `param` from its source arrays (or one row block of its single
    source): concatenated along axis 0, then the named transform applied in the source dtype."""
    if len(arrays) == 1:
        weight = arrays[0]
    else:
        if len({a.dtype for a in arrays}) > 1:  # mixed source dtypes: float32 is exact for every float input
            arrays = [a.astype(np.float32) for a in arrays]
        weight = np.concatenate(arrays, axis=0)
    if param.transform == "none":
        return weight
    if param.transform == "add_one":
        return weight + weight.dtype.type(1)  # numpy's own rounding in the source dtype, as MLC's map_func
    raise QuantizeError(f"{param.name}: unknown transform {param.transform!r}",
                        hint="this is a bug in the architecture definition")


def library_params(params: list[SourceParam], scheme: Scheme) -> list[LibraryParam]:
    """The compiled library's parameter list, in order, for these params under `scheme`."""
    out: list[LibraryParam] = []
    for p in params:
        out.extend(_library_params_of(p, scheme))
    return out


def _library_params_of(p: SourceParam, scheme: Scheme) -> list[LibraryParam]:
    shape: tuple[Dim, ...] = p.symbolic_shape if p.symbolic_shape is not None else p.shape
    if not scheme.quantizes(p.role):
        return [LibraryParam(p.name, tuple(shape), scheme.model_dtype)]
    if len(p.shape) != 2:
        raise QuantizeError(
            f"{p.name}: role {p.role} needs a 2-D weight, got shape {p.shape}",
            hint="this is a bug in the architecture definition",
        )
    n, k = shape
    words = scheme.num_storage(int(p.shape[1]))
    groups = scheme.num_groups(int(p.shape[1]))
    q_weight: tuple[Dim, ...] = (n, words)
    q_scale: tuple[Dim, ...] = (n, groups)
    if scheme.transposes(p.role):
        q_weight, q_scale = q_weight[::-1], q_scale[::-1]
    return [
        LibraryParam(f"{p.module}.q_weight", q_weight, scheme.storage),
        LibraryParam(f"{p.module}.q_scale", q_scale, scheme.model_dtype),
    ]


def quantize_param(
    param: SourceParam, weight: np.ndarray, scheme: Scheme, *, scales: ScaleMode = "mlc"
) -> list[tuple[str, np.ndarray]]:
    """The library arrays for one parameter: [(name, array)] in library_params order.

    `weight` is the (already concatenated) source tensor in its source dtype. It is cast to the
    model dtype (RNE, overflow -> inf), checked to be finite, then quantized if the role is.
    `scales`: "mlc" is bit-exact with MLC's converter; "mse" and "range" pick other per-group
    scales in the same format, never with a larger per-group error (quantize/search.py).
    """
    from quantize.group import NonFiniteRows, group_quantize  # torch loads only when arrays are made

    check_scale_mode(scales)
    _check_input(param, weight)
    if not scheme.quantizes(param.role):
        return [(param.name, _cast_checked(param, weight, scheme.model_dtype))]
    try:
        if scales == "mlc":
            q_weight, q_scale = group_quantize(
                weight, scheme.model_dtype, scheme.bits, scheme.group_size, transpose=scheme.transposes(param.role)
            )
        else:
            from quantize.search import search_quantize

            q_weight, q_scale = search_quantize(weight, scheme.model_dtype, scheme.bits, scheme.group_size,
                                                transpose=scheme.transposes(param.role), mode=scales)
    except NonFiniteRows as bad:
        raise _non_finite(param, weight, scheme.model_dtype, bad.row) from None
    return [(f"{param.module}.q_weight", q_weight), (f"{param.module}.q_scale", q_scale)]


def _check_input(param: SourceParam, weight: np.ndarray) -> None:
    if weight.dtype.name not in _SOURCE_DTYPES:
        raise QuantizeError(
            f"{param.name}: source dtype {weight.dtype} is not float32, float16 or bfloat16",
            hint="convert the checkpoint to a floating-point dtype first",
        )
    if tuple(weight.shape) != tuple(param.shape):
        raise QuantizeError(
            f"{param.name}: source shape {tuple(weight.shape)} differs from the expected {tuple(param.shape)}",
            hint="check that config.json matches the weight files",
        )


def _cast_checked(param: SourceParam, weight: np.ndarray, model_dtype: str) -> np.ndarray:
    from quantize.group import NonFiniteRows, cast_finite

    try:
        return cast_finite(weight, model_dtype)
    except NonFiniteRows as bad:
        raise _non_finite(param, weight, model_dtype, bad.row) from None


def _non_finite(param: SourceParam, weight: np.ndarray, model_dtype: str, row: int) -> NonFiniteWeightError:
    """Say whether the source itself is bad or the values overflow the model dtype."""
    source_row = np.asarray(weight[row : row + 1] if weight.ndim > 1 else weight, dtype=np.float32)
    if not np.isfinite(source_row).all():
        what = f"NaN or Inf in the source weights (row {row})"
        hint = "the checkpoint is corrupt or the fine-tune diverged; re-export it"
    else:
        biggest = float(np.abs(source_row).max())
        what = f"a value of magnitude {biggest:.6g} (row {row}) overflows {model_dtype}"
        hint = "pick a scheme with a wider model dtype (e.g. q4bf16_1 or q0bf16)"
    return NonFiniteWeightError(f"{param.name}: {what}", param=param.name, hint=hint)
