"""Per-op profile report and Chrome/Perfetto trace from per-dispatch GPU times."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from common import expr
from common.manifest import Plan
from runtime.executor import StepProfile


def cost(e: expr.Expr, seq: int, total: int) -> float:
    """Evaluate a dispatch's ``bytes`` / ``flops`` expression (written by the compiler) for these scalars."""
    return float(expr.evaluate(e, {"seq": seq, "total": total}))


def _pattern(node: str) -> str:
    parts = node.split(".")
    return ".".join("*" if p.isdigit() else p for p in parts)


def report(profiles: list[StepProfile], plans: dict[str, Plan], phase: str) -> str:
    steps = [p for p in profiles if p.phase == phase]
    if not steps:
        return ""
    dispatches = plans[phase].dispatches
    times = np.mean([s.times for s in steps], axis=0)
    seq, total = steps[-1].seq, steps[-1].total
    step_time = float(times.sum())
    rows: OrderedDict[str, dict] = OrderedDict()
    by_class: dict[str, float] = {}
    for d, t in zip(dispatches, times, strict=True):
        key = f"{_pattern(d.node)}|{d.kernel}"
        r = rows.setdefault(key, {"name": _pattern(d.node), "kclass": d.kclass, "kernel": d.kernel,
                                  "count": 0, "time": 0.0, "bytes": 0.0, "flops": 0.0})
        r["count"] += 1
        r["time"] += t
        r["bytes"] += cost(d.bytes, seq, total)
        r["flops"] += cost(d.flops, seq, total)
        by_class[d.kclass] = by_class.get(d.kclass, 0.0) + t
    what = f"{phase} (mean of {len(steps)} step{'s' if len(steps) > 1 else ''}, seq={seq}, total={total}, " \
           f"timing: {steps[0].source})"
    lines = [f"== profile: {what}",
             f"{'op':34} {'class':13} {'kernel':18} {'n':>4} {'time us':>10} {'%':>6} {'GB/s':>8} {'GFLOP/s':>9}"]
    for r in sorted(rows.values(), key=lambda r: -r["time"]):
        t = max(r["time"], 1e-12)
        lines.append(f"{r['name'][:34]:34} {r['kclass']:13} {r['kernel'][:18]:18} {r['count']:>4} "
                     f"{r['time'] * 1e6:>10.1f} {100 * r['time'] / step_time:>6.1f} {r['bytes'] / t / 1e9:>8.1f} "
                     f"{r['flops'] / t / 1e9:>9.1f}")
    lines.append("by kernel class: " + ", ".join(f"{k} {v * 1e6:.0f}us ({100 * v / step_time:.0f}%)"
                                                  for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])))
    n = len(dispatches)
    lines.append(f"step time {step_time * 1e3:.3f} ms (sum of op times); dispatches per step: {n}")
    lines.append(f"ops on GPU: {n} of {n}; ops on CPU: 0")
    return "\n".join(lines)


def write_trace(path: Path, profiles: list[StepProfile], plans: dict[str, Plan]) -> None:
    """Chrome trace: one lane per phase, ops laid end to end by their GPU durations."""
    events, t = [], 0.0
    for k, p in enumerate(profiles):
        for d, dt in zip(plans[p.phase].dispatches, p.times, strict=True):
            events.append({"name": d.node, "cat": d.kclass, "ph": "X", "ts": t * 1e6, "dur": dt * 1e6,
                           "pid": 1, "tid": p.phase, "args": {"kernel": d.kernel, "step": k,
                                                              "seq": p.seq, "total": p.total}})
            t += dt
    Path(path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
