"""Where the host time of a decode step goes: launch table, buffer writes, encoding, submit, and
the read-back wait (which includes the GPU work), medians over many steps.

    python benchmarks/host_timing.py COMPILED_DIR [--steps 150]

On a fast GPU decode is host-bound; this is how the fast dispatch path and the two-piece submit
in ``runtime.executor`` were chosen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    ex = load(a.compiled_dir).executor
    ph = ex.phases["decode"]
    logits, _ = ex.step("prefill", np.arange(1, 129, dtype=np.int32), 128)
    parts = {k: [] for k in ("argmax", "launch", "write", "encode+submit", "read (waits for the GPU)", "total")}
    t = 128
    for step in range(a.steps):
        t += 1
        t0 = time.perf_counter()
        tok = int(logits.argmax())
        t1 = time.perf_counter()
        grids, pods = ph.launches(1, t)
        t2 = time.perf_counter()
        q = ex.device.queue
        q.write_buffer(ex.ids, 0, np.asarray([tok], np.int32).tobytes())
        q.write_buffer(ph.pod_buffer, 0, pods.tobytes())
        t3 = time.perf_counter()
        enc = ex._encode(ph, grids, 1)
        enc.copy_buffer_to_buffer(ph.logits, 0, ex.staging, 0, 4 * ex.vocab)
        q.submit([enc.finish()])
        t4 = time.perf_counter()
        logits = ex._read_logits()
        t5 = time.perf_counter()
        if step >= 20:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True):
                parts[k].append(v * 1e6)
    print(f"decode step on {ex.dev.name}, {len(ph.programs)} dispatches, medians in us:")
    for k, v in parts.items():
        print(f"  {k:26} {statistics.median(v):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
