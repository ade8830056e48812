from personalize.runtime import load  # noqa: F401
