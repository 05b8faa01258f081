"""On-device tuning: every GEMV candidate is timed, the choice is stored in the module, and the
tuned module generates exactly what the untuned one does."""

from __future__ import annotations

import shutil

from common.manifest import load_manifest
from runtime.api import load
from runtime.sampling import SamplingParams
from runtime.tune import tune


def test_tune_then_generate(compiled, tmp_path):
    src = compiled("tiny", "f32", "float32")
    mod = tmp_path / "tuned.vkmod"
    shutil.copytree(src, mod)
    out = tune(mod, reps=3)
    manifest = load_manifest(mod)
    assert out["choices"] and set(out["choices"]) == {k for k, v in manifest.kernels.items() if v.alternates}
    for main, rows in out["measurements"].items():
        assert len(rows) == 1 + len(manifest.kernels[main].alternates)
        assert all(r["us"] > 0 for r in rows.values())
    tuned = load(mod)
    used = {d.kernel for plan in tuned.module.manifest.phases.values() for d in plan.dispatches}
    assert set(out["choices"].values()) <= used
    prompt = [7, 8, 9, 10]
    assert list(tuned.generate(prompt, 12, SamplingParams())) == list(load(src).generate(prompt, 12, SamplingParams()))
