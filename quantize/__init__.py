"""MLC LLM's weight quantization schemes, bit-exact with `mlc_llm convert_weight`.

    scheme = get_scheme("q4f16_1")
    library_params(source_params, scheme)   -> the compiled library's parameter list
    quantize_param(param, weight, scheme)   -> [(library_name, array)] for one parameter
    quantize_param(..., scales="mse")       -> the same format with error-minimizing scales
"""

from quantize.convert import SCALE_MODES, ScaleMode, check_scale_mode, library_params, quantize_param
from quantize.errors import NonFiniteWeightError, QuantizeError
from quantize.schemes import SCHEMES, Scheme, get_scheme
from quantize.spec import LibraryParam, SourceParam

__all__ = [
    "SCALE_MODES",
    "SCHEMES",
    "LibraryParam",
    "NonFiniteWeightError",
    "QuantizeError",
    "ScaleMode",
    "Scheme",
    "SourceParam",
    "check_scale_mode",
    "get_scheme",
    "library_params",
    "quantize_param",
]
