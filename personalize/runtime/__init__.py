"""Run artifacts on the compiled library: `load(name_or_dir, device="cpu"|"cuda", lib=None)`."""

from .errors import ArtifactMismatchError, RuntimeUserError, TokenRangeError
from .model import Generation, Model, load

__all__ = ["ArtifactMismatchError", "Generation", "Model", "RuntimeUserError", "TokenRangeError", "load"]
