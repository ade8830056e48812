"""The demo and its assets (not part of the wheel): the real SmolLM2-135M-Instruct built offline
(smollm2.py), a CPU LoRA fine-tune that teaches a made-up fact (finetune.py), and the walk-through
`python -m demo` (scripts/demo.sh). The end-to-end tests import the same code."""
