"""Soak: 1,000 consecutive decode steps and 20 consecutive generate() calls in one process. Logits stay
equal to a fresh model's for the same tokens, and GPU objects do not pile up (wgpu's live counts)."""

from __future__ import annotations

import gc

import numpy as np
import wgpu

from runtime.api import load
from runtime.sampling import SamplingParams

GREEDY = SamplingParams()

PROMPT = [3, 14, 15, 92, 65]


def _live() -> tuple[int, int]:
    gc.collect()
    c = wgpu.diagnostics.object_counts.get_dict()
    return c["Buffer"]["count"], c["BindGroup"]["count"]


def _decode(model, steps: int, keep: set[int]) -> tuple[list[int], dict[int, np.ndarray]]:
    """Greedy: prefill PROMPT, then ``steps`` decode steps; logits of the steps in ``keep``."""
    ex = model.executor
    logits, _ = ex.step("prefill", np.asarray(PROMPT, np.int32), len(PROMPT))
    toks, kept, total = [], {}, len(PROMPT)
    for i in range(steps):
        tok = int(np.argmax(logits))
        toks.append(tok)
        total += 1
        logits, _ = ex.step("decode", np.asarray([tok], np.int32), total)
        if i in keep:
            kept[i] = logits
    return toks, kept


def test_soak(compiled):
    mod = compiled("tiny", "f32", "float32", max_context=1024 + 16)
    fresh = load(mod)
    fresh_toks, fresh_logits = _decode(fresh, 50, set(range(50)))
    fresh_gen = list(fresh.generate(PROMPT, 16, GREEDY, set()))
    del fresh

    model = load(mod)
    before, bufs_before = _live(), model.executor.live_buffers
    toks, logits = _decode(model, 1000, set(range(50)) | {999})
    assert toks[:50] == fresh_toks
    for i in range(50):
        np.testing.assert_array_equal(logits[i], fresh_logits[i])
    assert np.isfinite(logits[999]).all()
    for _ in range(20):
        assert list(model.generate(PROMPT, 16, GREEDY, set())) == fresh_gen
    # the KV cache was overwritten by those runs; the same tokens still give the same logits
    again_toks, again = _decode(model, 50, set(range(50)))
    assert again_toks == fresh_toks and all(np.array_equal(again[i], fresh_logits[i]) for i in range(50))
    assert _live() == before and model.executor.live_buffers == bufs_before
