"""personalize/runtime/sampling.py against the math: greedy at temperature 0, softmax(logits / T)
frequencies otherwise, and nucleus (top-p) truncation to the smallest prefix with mass >= top_p.

Each test would fail if temperature or top-p were ignored (checked explicitly where it is not obvious).
Fixed seeds and a chi-square bound at p = 0.001, so a correct sampler fails about 1 run in 1000 per seed:
the seeds are fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

from personalize.runtime.sampling import sample

LOGITS = np.array([2.0, 1.0, 0.5, -0.5, -1.0], dtype=np.float32)
N = 5_000
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}  # chi-square quantile 0.999 by degrees of freedom


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def frequencies(temperature: float, top_p: float, seed: int = 0, n: int = N) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.bincount([sample(LOGITS, temperature, top_p, rng) for _ in range(n)], minlength=LOGITS.size)
    return counts


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew a token the distribution excludes"
    return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())


def test_temperature_zero_is_greedy_whatever_the_rng():
    for seed in range(20):
        assert sample(LOGITS, 0.0, 1.0, np.random.default_rng(seed)) == 0
        assert sample(LOGITS[::-1].copy(), 0.0, 0.5, np.random.default_rng(seed)) == LOGITS.size - 1


def test_tiny_top_p_only_ever_draws_the_argmax():
    counts = frequencies(temperature=1.5, top_p=1e-6, n=2000)
    assert counts[0] == 2000


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_softmax_of_logits_over_temperature(temperature):
    counts = frequencies(temperature, top_p=1.0, seed=int(temperature * 10))
    df = LOGITS.size - 1
    assert chi_square(counts, softmax(LOGITS / temperature)) < CHI2_999[df]
    if temperature != 1.0:  # ignoring the temperature would be caught by the same test
        assert chi_square(counts, softmax(LOGITS)) > 10 * CHI2_999[df]


def test_top_p_keeps_the_smallest_prefix_with_enough_mass():
    probs = softmax(LOGITS)  # about [0.57, 0.21, 0.13, 0.05, 0.03]
    top_p = 0.75  # the first two hold 0.78 >= 0.75, the first alone 0.57 < 0.75
    assert probs[0] < top_p <= probs[:2].sum()
    counts = frequencies(temperature=1.0, top_p=top_p, seed=3)
    nucleus = np.where(np.arange(LOGITS.size) < 2, probs, 0.0)
    assert counts[2:].sum() == 0
    assert chi_square(counts, nucleus / nucleus.sum()) < CHI2_999[1]


def test_top_p_applies_after_temperature():
    # at T = 0.25 the argmax alone holds more than 0.9 of the mass, so top_p = 0.9 keeps only it;
    # at T = 1 it would keep three tokens
    sharp = softmax(LOGITS / 0.25)
    assert sharp[0] >= 0.9 > softmax(LOGITS)[0]
    assert frequencies(temperature=0.25, top_p=0.9, n=2000)[0] == 2000
