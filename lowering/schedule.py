"""Schedules: which TVM dlight rules may schedule each kernel class, tried in order.

The rule that applied is recorded with the kernel (and shown by the dump), so a kernel that only
got the generic Fallback schedule is visible rather than silently slow.
"""

from __future__ import annotations

import tvm
import tvm.s_tir.dlight as dl

RULES: dict[str, tuple[str, ...]] = {
    "gemv": ("GEMV", "LowBatchGEMV", "Reduction", "Fallback"),
    "batched_gemv": ("GEMV", "Reduction", "GeneralReduction", "Fallback"),
    "gemm": ("Matmul", "Fallback"),
    "batched_gemm": ("Matmul", "GeneralReduction", "Fallback"),
    "norm": ("GeneralReduction", "Reduction", "Fallback"),
    "softmax": ("GeneralReduction", "Fallback"),
}
DEFAULT_RULES = ("Fallback",)


def rules_for(kclass: str) -> tuple[str, ...]:
    return RULES.get(kclass, DEFAULT_RULES)


def apply_rule(mod: tvm.IRModule, rule: str, target: tvm.target.Target) -> tvm.IRModule | None:
    """The module scheduled by one dlight rule, or None when the rule does not match it."""
    with target:
        out = dl.ApplyDefaultSchedule(getattr(dl.gpu, rule)())(mod)
    fn = next(iter(out.functions.values()))
    return out if fn.attrs is not None and fn.attrs.get("tirx.is_scheduled", False) else None
