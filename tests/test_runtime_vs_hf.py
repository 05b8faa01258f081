"""The compiled module on Vulkan (lavapipe in CI) against HF transformers, token for token."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import load
from runtime.sampling import SamplingParams
from tests.hf_oracle import HFOracle, assert_steps_match_hf

CASES = [  # preset, model dtype, compiled weight dtype, KV cache dtype, tolerance
    ("tiny", "f32", "float32", "float32", 1e-4),
    # HF's cache stores f16-rounded rows too (HFOracle kv_dtype): as tight as the f32 cache
    ("tiny-mha", "f32", "float32", "float16", 1e-4),
    ("tiny-gqa4", "f32", "float16", "float16", 2e-2),
]


@pytest.mark.parametrize("preset,dtype,wdtype,kv,tol", CASES)
def test_logits_match_hf(compiled, preset, dtype, wdtype, kv, tol):
    model = load(compiled(preset, dtype, wdtype, kv_dtype=kv))
    hf = HFOracle(model.model_dir, round_weights_to_f16=wdtype == "float16", kv_dtype=kv)
    for plen in (1, 2, 17, 64):  # 64 > prefill_chunk (32): the prompt is prefilled in two chunks
        prompt = [int(x) for x in np.random.default_rng(plen).integers(0, model.config.vocab_size, plen)]
        assert_steps_match_hf(model, hf, prompt, 16 if plen in (1, 17) else 2, tol)


def test_f16_kv_cache_at_long_context_against_hf(compiled):
    """The default build (f16 cache, flash-decoding attention) at a context of many splits (11 to
    12 splits of 64 positions per kv head). Against HF on the same f16-rounded cache it is as
    tight as the f32 cache (measured <= 5e-6). Against HF's own f32 cache the gap is what f16
    storage of K/V costs (each element off by up to 2^-11 relative, f16's 10-bit mantissa):
    measured 2e-5 - 6e-5 on these logits, hence 2e-4, twice the f32 cases' 1e-4."""
    model = load(compiled("tiny-gqa4", "f32", "float32", max_context=1024, kv_dtype="float16"))
    prompt = [int(x) for x in np.random.default_rng(7).integers(0, model.config.vocab_size, 700)]
    assert_steps_match_hf(model, HFOracle(model.model_dir, kv_dtype="float16"), prompt, 8, 1e-4)
    assert_steps_match_hf(model, HFOracle(model.model_dir), prompt, 8, 2e-4)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gqa4"])
def test_greedy_generation_equals_hf_generate(compiled, preset):
    model = load(compiled(preset, "f32", "float32"))
    from runtime.text import stop_ids

    prompt = [11, 250, 3, 99, 42]
    ours = list(model.generate(prompt, 32, SamplingParams(0.0), stop_ids(model.model_dir, model.tokenizer)))
    theirs = HFOracle(model.model_dir, kv_dtype=model.module.manifest.kv_cache.dtype).greedy(prompt, 32)
    assert ours == theirs
    assert len(ours) >= 8


def test_sampling_is_reproducible_and_samples(compiled):
    model = load(compiled("tiny", "f32", "float32"))
    params = SamplingParams(temperature=5.0, top_k=50, top_p=0.9, seed=7)
    a = list(model.generate([1, 2, 3], 12, params))
    b = list(model.generate([1, 2, 3], 12, params))
    c = list(model.generate([1, 2, 3], 12, SamplingParams(5.0, 50, 0.9, seed=8)))
    assert a == b and a != c
    assert a != list(model.generate([1, 2, 3], 12, SamplingParams(0.0)))


def test_profile_covers_every_op(compiled):
    from runtime.profile import report

    model = load(compiled("tiny", "f32", "float32"))
    list(model.generate([4, 5, 6], 3, profile=True))
    plans = model.module.manifest.phases
    for phase in ("prefill", "decode"):
        text = report(model.last_stats.profiles, plans, phase)
        n = len(plans[phase].dispatches)
        assert f"ops on GPU: {n} of {n}; ops on CPU: 0" in text
        assert all(t >= 0 for p in model.last_stats.profiles for t in p.times)


def test_fast_dispatch_path_equals_public_api(compiled, monkeypatch):
    """runtime.fastpass and runtime.inflight call wgpu-native directly; wgpu-py's public API must
    give identical logits and the same pipelined greedy tokens."""
    import runtime.fastpass as fastpass
    from runtime.inflight import Inflight

    model = load(compiled("tiny-mha", "f32", "float32"))
    ex = model.executor

    def run():
        logits, _ = ex.step("prefill", np.asarray([3, 1, 4, 1, 5], np.int32), 5)
        out = [logits]
        for t in range(6, 40):
            logits, _ = ex.step("decode", np.asarray([int(logits.argmax())], np.int32), t)
            out.append(logits)
        greedy = list(model.generate([3, 1, 4, 1, 5], 30, SamplingParams(), stop_ids=set()))
        return out, greedy

    fast = run()
    assert fastpass.RAW is not None and ex.inflight._raw is not None  # the fast paths are in use with this wgpu
    monkeypatch.setattr(fastpass, "RAW", None)
    ex.inflight = Inflight(ex.device)
    public = run()
    assert all(np.array_equal(a, b) for a, b in zip(fast[0], public[0], strict=True))
    assert fast[1] == public[1] and len(set(fast[1])) > 3
