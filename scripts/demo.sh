#!/usr/bin/env bash
# The main job, from a fresh machine: real SmolLM2 -> LoRA fine-tune -> personalize add -> generate.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$ROOT"  # the demo package sits next to the product packages, outside the wheel
exec "$VPY" -m demo "$@"
