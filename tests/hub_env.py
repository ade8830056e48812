"""No Hub test ever sees the developer's Hugging Face identity (review T18).

`clean_hf_env` removes HF_TOKEN, HF_HOME, HF_ENDPOINT, HUGGING_FACE_HUB_TOKEN (and every other HF_*
setting) and points HF_HOME at an empty directory, so `get_token()` finds no login cache and a real
token can never be read or sent, not even to the local stub. Use it in every test module that talks
to a Hub (stub or not): `pytestmark = pytest.mark.usefixtures("clean_hf_env")` plus the import.
"""

from __future__ import annotations

import os

import pytest

SCRUBBED = ("HF_TOKEN", "HF_HOME", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN")


def scrubbed_environ(extra: dict | None = None) -> dict[str, str]:
    """os.environ without any HF_* / HUGGING_FACE_* variable, plus `extra` (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(extra or {})
    return env


@pytest.fixture
def clean_hf_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("HF_", "HUGGING")):
            monkeypatch.delenv(key)
    hf_home = tmp_path / "hf-home-empty"
    hf_home.mkdir()
    monkeypatch.setenv("HF_HOME", str(hf_home))
    # huggingface_hub read its constants at import time: point those at the empty home too.
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the stub speaks plain LFS only
    return hf_home
