"""Shared fixtures: an isolated registry per test, tiny random models, the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads crawl on busy cores

import pytest

from tests.tiny_models import add_chatml_tokenizer, make_tiny_model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $PERSONALIZE_HOME for this test (libraries are shared, see below)."""
    h = tmp_path / "home"
    monkeypatch.setenv("PERSONALIZE_HOME", str(h))
    shared_libs = os.environ.get("PERSONALIZE_TEST_LIBS")
    if shared_libs:  # compiled libraries are keyed by content: sharing them between tests is safe
        (h).mkdir(parents=True, exist_ok=True)
        Path(shared_libs).mkdir(parents=True, exist_ok=True)
        (h / "libs").symlink_to(shared_libs)
    return h


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from personalize.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama", tied=True)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama_untied(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-untied", "llama", tied=False, seed=1)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-mistral", "mistral", seed=2)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2", "qwen2", tied=True, seed=3)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3", "qwen3", tied=True, seed=4)
    add_chatml_tokenizer(d)
    return d


def run_cli(*args: str, env: dict | None = None):
    """Run the real CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from personalize.cli import app

    runner = CliRunner()
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gemma2", "gemma2", tied=True, seed=5,
                        norm_grid=1 / 32)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-phi3", "phi3", tied=False, seed=6)
    add_chatml_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> Path:
    d = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gemma3", "gemma3_text", tied=True, seed=7,
                        norm_grid=1 / 32)
    add_chatml_tokenizer(d)
    return d
