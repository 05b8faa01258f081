"""Greedy decoding on the GPU: the argmax kernels against numpy, and the pipelined decode loop
against the host-sampled one (HF's own greedy tokens are checked through ``Model.generate`` in
test_runtime_vs_hf.py and test_hf_written_dirs.py, which take this path)."""

from __future__ import annotations

import numpy as np
import pytest

from lowering.build import build_kernel
from lowering.kernels import sampling
from lowering.module import kernel_info
from runtime import load
from runtime.device import open_device
from runtime.launcher import KernelLauncher
from runtime.sampling import SamplingParams


def _argmax_on_gpu(dev, launchers, logits: np.ndarray) -> int:
    scratch = np.full(2 * sampling.groups(logits.size), np.nan, np.float32)
    partial, final = launchers
    scratch = partial([logits, scratch], 1, 1)[1]
    return int(final([scratch, np.full(4, -1, np.int32)], 1, 1)[1][0])


@pytest.mark.parametrize("vocab", [389, 2048, 5003, 151936])
def test_argmax_kernels_match_numpy(vocab):
    dev = open_device()
    launchers = []
    for name, spec in sampling.argmax_specs(vocab):
        k, _ = build_kernel(spec, name, use_cache=False, first_variant_only=True)
        launchers.append(KernelLauncher(dev.device, name, kernel_info(k), k.wgsl))
    rng = np.random.default_rng(vocab)
    cases = [rng.standard_normal(vocab).astype(np.float32) * 10, np.zeros(vocab, np.float32),
             -np.abs(rng.standard_normal(vocab)).astype(np.float32) - 1e30]
    ties = rng.standard_normal(vocab).astype(np.float32)
    ties[rng.choice(vocab, 3, replace=False)] = 50.0  # ties go to the lowest index, as numpy's
    last = rng.standard_normal(vocab).astype(np.float32)
    last[-1] = 99.0
    for x in [*cases, ties, last]:
        assert _argmax_on_gpu(dev, launchers, x) == int(np.argmax(x))


def test_pipelined_greedy_equals_host_argmax(compiled):
    """The GPU-chosen tokens equal a host argmax of read-back logits, step by step, and closing the
    generation early leaves a cache that the next generation reuses correctly."""
    model = load(compiled("tiny-mha", "f32", "float32", max_context=128, prefill_chunk=16))  # untied: not an echo
    ex = model.executor
    prompt = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19]
    ours = list(model.generate(prompt, 24, SamplingParams(), stop_ids=set()))
    total, logits = 0, None
    for s in range(0, len(prompt), ex.chunk):
        chunk = np.asarray(prompt[s:s + ex.chunk], np.int32)
        total += len(chunk)
        logits, _ = ex.step("prefill", chunk, total)
    host = [int(logits.argmax())]
    while len(host) < 24:
        total += 1
        logits, _ = ex.step("decode", np.asarray(host[-1:], np.int32), total)
        host.append(int(logits.argmax()))
    assert ours == host
    assert len(set(ours)) > 3, "a degenerate model would not show a wrong token"

    gen = model.generate(prompt, 24, SamplingParams(), stop_ids=set())
    head = [next(gen) for _ in range(6)]
    gen.close()  # one step was already queued beyond what we read: the cache must not claim it
    assert ex.cached_tokens == prompt + head[:5]
    rest = list(model.generate(prompt + head, 10, SamplingParams(), stop_ids=set(), reuse_cache=True))
    assert model.last_stats.cached_tokens == len(prompt) + 5
    assert rest == ours[6:16]
