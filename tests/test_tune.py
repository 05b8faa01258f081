"""On-device tuning: every GEMV candidate is timed, the choice is stored in the module, and the
tuned module generates exactly what the untuned one does."""

from __future__ import annotations

import shutil

from common.manifest import load_manifest
from runtime import tune as tune_cli
from runtime.api import load
from runtime.sampling import SamplingParams
from runtime.tune import tune
from tests.cli import error_line


def test_tune_then_generate(compiled, tmp_path):
    src = compiled("tiny", "f32", "float32", candidates=True)
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


def test_without_tuning_candidates_only_defaults_are_built(compiled, capsys):
    """``--no-tuning-candidates`` (``LowerOptions.tuning_candidates=False``) builds each kernel's
    default schedule alone: the same dispatches and default kernels, nothing for the tuner."""
    full = load_manifest(compiled("tiny", "f32", "float32", candidates=True))
    lean = load_manifest(compiled("tiny", "f32", "float32"))
    assert not any(k.alternates for k in lean.kernels.values())
    assert any(k.alternates for k in full.kernels.values())
    for phase in ("prefill", "decode"):
        assert [(d.node, full.kernels[d.kernel].rule) for d in full.phases[phase].dispatches] == \
            [(d.node, lean.kernels[d.kernel].rule) for d in lean.phases[phase].dispatches]
    lean_dir = str(compiled("tiny", "f32", "float32"))
    assert "no kernel has other schedules" in error_line(capsys, tune_cli.main, [lean_dir])
