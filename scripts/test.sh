#!/usr/bin/env bash
# The whole test suite, from a fresh machine (installs everything it needs first).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
"$VPY" -m personalize.smollm2 >/dev/null   # cache the real model once for the end-to-end tests
cd "$ROOT"
exec "$VPY" -m pytest -q "$@"
