"""The sampler's distribution against HF transformers' own logits warpers (temperature, top-k,
top-p, min-p, applied in the order ``generate`` applies them), on a Qwen-sized vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from runtime.sampling import Sampler, SamplingParams

VOCAB = 151936


def _hf_distribution(logits: np.ndarray, p: SamplingParams) -> dict[int, float]:
    scores = torch.tensor(logits, dtype=torch.float64)[None]
    warpers = [TemperatureLogitsWarper(p.temperature)]
    if p.top_k:
        warpers.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        warpers.append(TopPLogitsWarper(p.top_p))
    if p.min_p > 0.0:
        warpers.append(MinPLogitsWarper(p.min_p))
    for w in warpers:
        scores = w(None, scores)
    probs = torch.softmax(scores, -1)[0].numpy()
    return {int(i): float(probs[i]) for i in np.flatnonzero(probs)}


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.6, top_k=20, top_p=0.95),  # Qwen3's generation_config
    SamplingParams(temperature=1.0, top_p=0.9),
    SamplingParams(temperature=0.7, top_p=0.5, min_p=0.05),
    SamplingParams(temperature=1.3, top_k=50),
    SamplingParams(temperature=0.8, min_p=0.1),
    SamplingParams(temperature=2.0),
])
@pytest.mark.parametrize("spread", [1.0, 8.0])  # flat (wide nucleus) and peaked logits
def test_distribution_matches_hf_warpers(params, spread):
    logits = (np.random.default_rng(int(spread)).standard_normal(VOCAB) * spread).astype(np.float32)
    cand, probs = Sampler(params).distribution(logits)
    ours = dict(zip(cand.tolist(), probs.tolist(), strict=True))
    hf = _hf_distribution(logits, params)
    assert set(ours) == set(hf)
    assert max(abs(ours[t] - hf[t]) for t in hf) < 1e-6


def test_draws_follow_the_distribution():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -9.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=3, seed=0))
    draws = np.bincount([s(logits) for _ in range(20000)], minlength=5) / 20000
    cand, probs = s.distribution(logits)
    expected = np.zeros(5)
    expected[cand] = probs
    assert np.abs(draws - expected).max() < 0.015
    assert draws[3] == draws[4] == 0
