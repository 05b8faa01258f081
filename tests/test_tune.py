"""On-device tuning: every GEMV candidate is timed, the choice is stored in the module, and the
tuned module generates exactly what the untuned one does."""

from __future__ import annotations

import json
import shutil

from common.manifest import SCRATCH_PREFIX, const_nbytes, load_manifest
from runtime import tune as tune_cli
from runtime.api import load
from runtime.compiled import TUNING_FILE
from runtime.sampling import SamplingParams
from runtime.tune import _choose, tune
from tests.cli import error_line


def test_tune_then_generate(compiled, tmp_path, capsys):
    """Every kernel with alternates gets a choice among its candidates, decode attention's by its
    times at a short and a long context (here the module's 256), and the tuned module generates
    what the untuned one does."""
    src = compiled("tiny", "f32", "float32", max_context=256, candidates=True)
    mod = tmp_path / "tuned.vkmod"
    shutil.copytree(src, mod)
    out = tune(mod, reps=3)
    printed = capsys.readouterr().out
    assert "(layers.0.pv, " in printed and "sum over contexts 128 + 256" in printed
    assert printed.count("sum over contexts") == printed.count("(layers.0.pv, ")  # attention alone
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


def test_split_k_gemms_generate_what_the_default_does(compiled, tmp_path):
    """Every prefill GEMM on a split-K schedule (as if the tuner had picked them): the records are
    summed by the last split of each tile, all GEMMs of a step share one records buffer as large
    as the chosen schedules need, and the module generates what the untuned one does."""
    src = compiled("tiny", "f32", "float32", candidates=True)
    mod = tmp_path / "split.vkmod"
    shutil.copytree(src, mod)
    kernels = load_manifest(mod).kernels
    choices = {main: max((a for a in k.alternates if "split-K" in kernels[a].rule), key=lambda a: kernels[a].rule)
               for main, k in kernels.items() if any("split-K" in kernels[a].rule for a in k.alternates)}
    assert len(choices) >= 4  # q, k/v, o, down (and the SwiGLU GEMM where it fits)
    (mod / TUNING_FILE).write_text(json.dumps({"device": "test", "choices": choices, "measurements": {}}))
    split = load(mod)
    scratch = {d.args[b.arg] for d in split.module.manifest.phases["prefill"].dispatches
               for b in split.module.manifest.kernels[d.kernel].bindings if d.args[b.arg].startswith(SCRATCH_PREFIX)}
    assert len(scratch) >= 2  # records of several sizes: the step has one buffer for all ...
    # ... as large as the chosen schedules declare they need (here less than the largest candidate's)
    mf = split.module.manifest
    declared = max(b.bytes for d in mf.phases["prefill"].dispatches for b in mf.kernels[d.kernel].bindings
                   if d.args[b.arg].startswith(SCRATCH_PREFIX))
    assert 0 < declared < max(const_nbytes(a) for a in scratch)
    assert declared <= split.executor.phases["prefill"].records.size < max(const_nbytes(a) for a in scratch)
    prompt = list(range(3, 40))
    assert list(split.generate(prompt, 12, SamplingParams())) == list(load(src).generate(prompt, 12, SamplingParams()))


def test_tuner_takes_split_k_only_when_it_pays():
    rows = {"plain": {"us": 100.0}, "split": {"us": 98.0}}
    assert _choose(rows, {"split"}) == "plain"  # 2% faster: not worth its scratch memory
    rows["split"]["us"] = 90.0
    assert _choose(rows, {"split"}) == "split"
    assert _choose({"split": {"us": 90.0}}, {"split"}) == "split"
