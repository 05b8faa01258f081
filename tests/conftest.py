"""Shared fixtures: random-weight model dirs in the HF layout and compiled modules, made once."""

from __future__ import annotations

import os

import pytest

from frontend.make_model import make_model


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """A fresh kernel cache per test session, so the suite never depends on a dev's cache; under
    pytest-xdist one for all the workers of the run (entries are written atomically), so a kernel
    that two workers need is built once."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's own directory, the parent of each worker's
    path = base / "kernel-cache"
    path.mkdir(exist_ok=True)
    os.environ["QWEN3VK_CACHE"] = str(path)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """``model_dir(preset, dtype="f32", seed=0, shards=1)`` -> path, cached per argument set."""
    made: dict[tuple, object] = {}

    def get(preset: str, dtype: str = "f32", seed: int = 0, shards: int = 1):
        key = (preset, dtype, seed, shards)
        if key not in made:
            path = tmp_path_factory.mktemp(f"{preset}-{dtype}-s{seed}") / "model"
            made[key] = make_model(path, preset, dtype, seed, shards)
        return made[key]

    return get


@pytest.fixture(scope="session")
def compiled(model_dir, tmp_path_factory):
    """``compiled(preset, model_dtype, weight_dtype, max_context, prefill_chunk, kv_dtype)`` -> module dir
    (``kv_dtype`` None: the compiler's default KV cache dtype; ``fuse_prefill_attention=False``: the
    batched GEMM + softmax prefill attention; ``fuse_prefill_swiglu=False``: prefill gate and up
    GEMMs + silu_mul kept apart; ``fuse_attention_combine=False``: decode attention's split merge as a
    dispatch of its own; ``candidates=True``: every kernel's tuning candidates
    too, which tests of the tuner and of the alternates need; the others compile the defaults only,
    several times faster)."""
    from lowering.module import compile_model
    from lowering.options import LowerOptions

    made: dict[tuple, object] = {}

    def get(preset: str, dtype: str = "f32", weight_dtype: str = "float32", max_context: int = 128,
            prefill_chunk: int = 32, kv_dtype: str | None = None, log=lambda *_: None,
            fuse_prefill_attention: bool = True, fuse_prefill_swiglu: bool = True, fuse_attention_combine: bool = True,
            candidates: bool = False):
        key = (preset, dtype, weight_dtype, max_context, prefill_chunk, kv_dtype, fuse_prefill_attention,
               fuse_prefill_swiglu, fuse_attention_combine, candidates)
        if key not in made:
            out = tmp_path_factory.mktemp("vkmod") / f"{preset}.vkmod"
            kv = {"kv_dtype": kv_dtype} if kv_dtype else {}
            opts = LowerOptions(weight_dtype, max_context, prefill_chunk, **kv,
                                fuse_prefill_attention=fuse_prefill_attention, fuse_prefill_swiglu=fuse_prefill_swiglu,
                                fuse_attention_combine=fuse_attention_combine, tuning_candidates=candidates)
            compile_model(model_dir(preset, dtype), out, opts, log=log)
            made[key] = out
        return made[key]

    return get


@pytest.fixture(scope="session")
def qwen06b(model_dir):
    """The real-shape qwen3-0.6b preset (bf16, ~1.2 GB), made once for the whole session."""
    return model_dir("qwen3-0.6b", "bf16")


def pytest_terminal_summary(terminalreporter):
    """What tests report as ``record_property("report", text)``, printed at the end of the run (the
    output of a pytest-xdist worker's test is not shown)."""
    lines = [value for rep in terminalreporter.getreports("passed") for name, value in rep.user_properties
             if name == "report"]
    if lines:
        terminalreporter.section("reports")
        for text in lines:
            terminalreporter.write_line(text)
