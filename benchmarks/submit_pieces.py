"""Prefill wall time by how a step's dispatches are cut into submits: the default cuts
(``runtime.executor.submit_cuts``) against one submit, the short-step two pieces and other cuts,
in interleaved rounds after a warm-up (medians).

    python benchmarks/submit_pieces.py COMPILED_DIR --model-dir MODEL_DIR [--tokens 512] [--rounds 12]

How the prefill cuts in ``runtime.executor`` were chosen (RESULTS.md, sixth session).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime.executor as executor  # noqa: E402
from runtime import load  # noqa: E402

WARMUP_S = 1.5  # the clocks after idle (bench.py: PREFILL_WARMUP_S)


def _fixed(*ends: int) -> Callable[[int, int], list[int]]:
    """Cuts at these dispatch indices (those inside the step), whatever the rows."""
    return lambda dispatches, seq: [0, *(e for e in ends if e < dispatches), dispatches]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=512, help="prompt length (at most the prefill chunk)")
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args()
    ex = load(a.compiled_dir, a.model_dir, verbose=False).executor
    default = executor.submit_cuts
    variants = {"default": default, "one submit": _fixed(),
                "two (short step)": lambda d, seq: default(d, 1), "8 | rest": _fixed(8), "8 | 40 | rest": _fixed(8, 40)}
    prompt = np.random.default_rng(0).integers(0, 1000, a.tokens).astype(np.int32)

    def prefill() -> float:
        t0 = time.perf_counter()
        ex.step("prefill", prompt, a.tokens)
        return time.perf_counter() - t0

    end = time.perf_counter() + WARMUP_S
    while time.perf_counter() < end:
        prefill()
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(a.rounds):
            for name, cuts in variants.items():
                executor.submit_cuts = cuts
                prefill()  # untimed: the first step after a change of cuts
                times[name].append(prefill())
    finally:
        executor.submit_cuts = default
    print(f"prefill of {a.tokens} tokens on {ex.dev.name}, medians of {a.rounds} interleaved runs:")
    for name, v in times.items():
        m = statistics.median(v)
        print(f"  {name:18s} {m * 1e3:8.3f} ms  {a.tokens / m:9.0f} tok/s  (min {min(v) * 1e3:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
