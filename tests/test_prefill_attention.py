"""Prefill attention as one flash-attention kernel: every schedule against numpy, the pass that
forms it (and the cases it leaves unfused), and the activation memory it saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frontend.config import parse_config
from frontend.make_model import make_config
from frontend.qwen3 import trace
from ir import reference
from ir.graph import Node
from lowering.kernels import prefill_attention as pa
from lowering.options import LowerOptions
from lowering.pipeline import lower
from lowering.plan import plan_memory


@pytest.mark.parametrize("nh,nkv,hd,kv_dtype,q_norm,packed", [
    (4, 4, 16, "float32", False, False), (4, 2, 16, "float16", True, False), (8, 2, 16, "float16", False, False),
    (8, 2, 16, "float32", True, False), (16, 8, 128, "float16", True, False), (4, 2, 16, "float16", True, True)])
def test_every_prefill_attention_schedule_against_numpy(nh, nkv, hd, kv_dtype, q_norm, packed):
    """Each schedule the tuner may pick (``pa.VARIANTS``), GQA groups 1, 2 and 4 (several heads
    per workgroup) and the real head_dim, f16 and f32 caches, with and without the q RMSNorm +
    RoPE prologue: one row, chunks that are not a multiple of any tile, with and without cached
    positions before the chunk (``past > 0``: a later prefill chunk), over a cache poisoned with
    NaN past ``total`` (never read into the result) into a NaN-poisoned output (every element
    written). ``packed``: q is the first ``nh * hd`` values of packed [q | k | v] rows (the k and v
    parts NaN: never read)."""
    from lowering.build import build_kernel
    from lowering.kernels.elementwise import rope_tables
    from lowering.kernels.spec import KernelSpec
    from lowering.module import kernel_info
    from runtime.constants import make_constant
    from runtime.device import open_device
    from runtime.launcher import KernelLauncher

    dev = open_device()
    rng = np.random.default_rng(3)
    ctx, group, rope = 320, nh // nkv, "default(theta=1000000.0)"
    tilings = pa.tilings(hd, group)
    assert len(tilings) == len(pa.VARIANTS)
    attrs = {"scale": hd ** -0.5, "gqa_group": group, **({"q_norm_eps": 1e-6, "rope": rope} if q_norm else {}),
             **({"q_packed": True} if packed else {})}
    width = (nh + 2 * nkv) * hd if packed else 0
    node = Node("attn", "prefill_attention", [], (), "float32", attrs)
    qn = (1e-6, "float32") if q_norm else None
    consts = [make_constant(c) for c in rope_tables(rope, hd, ctx)] if q_norm else []
    for t in tilings:
        name = t.name()
        build = lambda t=t: pa.prefill_attention_func(nh, nkv, hd, ctx, hd ** -0.5, kv_dtype, t, qn, width)  # noqa: E731
        nargs = 4 + 3 * q_norm
        spec = KernelSpec(name, "attention", build, [f"x{i}" for i in range(nargs)], [nargs - 1],
                          variants=[(name, build)])
        kern, _ = build_kernel(spec, "prefill_attention_test", use_cache=False)
        assert kern.rule == name
        run = KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)
        for seq, past in ((1, 0), (7, 0), (33, 5), (64, 0), (17, 100), (70, 200)):
            total = seq + past
            q = rng.standard_normal((seq, nh, hd)).astype(np.float32)
            if packed:
                q = np.concatenate([q.reshape(seq, nh * hd), np.full((seq, width - nh * hd), np.nan, np.float32)], 1)
            k, v = (rng.standard_normal((nkv, ctx, hd)).astype(kv_dtype) for _ in range(2))
            k[:, total:], v[:, total:] = np.nan, np.nan
            w = (rng.standard_normal(hd) * 0.5 + 1).astype(np.float32)
            want = reference.evaluate(node, [q.astype(np.float64), k[None, :, :total].astype(np.float64),
                                             v[None, :, :total].astype(np.float64), *([w] if q_norm else [])],
                                      {"seq": seq, "total": total})
            ins = [q, k, v, *([w, *consts] if q_norm else [])]
            got = run([*ins, np.full((seq, nh * hd), np.nan, np.float32)], seq, total)[-1]
            err = np.abs(got - want).max() / np.abs(want).max()
            assert np.isfinite(got).all() and err < 1e-5, f"{name} nh={nh} nkv={nkv} seq={seq} past={past}: {err:.1e}"


def test_supported_shapes():
    """vec4 rows and q in registers: head_dim a multiple of 4 up to 128 (every Qwen3 has 128)."""
    assert all(pa.supports(128, g) for g in (1, 2, 4, 8))
    assert pa.supports(16) and pa.supports(64, 2)
    assert not pa.supports(130) and not pa.supports(256) and not pa.supports(96)


@pytest.fixture(scope="module")
def cfg06():
    return parse_config(make_config("qwen3-0.6b", "bf16"), Path("config.json"))


def _slot_bytes(g, chunk: int, ctx: int) -> list[int]:
    shapes = {n.attrs["param"]: n.shape for n in g.by_op("weight")}
    return plan_memory(g, {"seq": chunk, "total": ctx, "ctx": ctx}, shapes)[1]


def test_pass_fuses_prefill_attention_and_shrinks_the_plan(cfg06):
    """Every layer's q norm + RoPE, q transpose, QK^T, softmax, PV and output transpose become one
    op that reads the q projection and feeds the o-proj; the matmuls it performs keep their classification. The score
    slots leave the activation plan: at the 0.6B shape with a 512-token chunk and a 4608 context
    the unfused plan needs two [16, 512, 4608] f32 slots (144 MiB each)."""
    opts = LowerOptions("float16", 4608, 512)
    p = lower(trace(cfg06, "prefill"), opts)
    assert len(p.by_op("prefill_attention")) == 28
    # q's norm + RoPE is the kernel's prologue; k's is fused into its cache write
    assert not p.by_op("softmax") and not p.by_op("transpose") and not p.by_op("rms_norm_rope")
    assert not [m for m in p.by_op("matmul") if len(m.shape) == 4]
    att = p["layers.0.attention"]
    assert att.inputs == ["layers.0.qkv_proj", "layers.0.k_all", "layers.0.v_all", "layers.0.self_attn.q_norm.weight"]
    assert att.shape == ("seq", 2048) and att.attrs["gqa_group"] == 2 and att.attrs["q_norm_eps"] == 1e-6
    assert att.attrs["scale"] == pytest.approx(128 ** -0.5) and att.attrs["rope"] == "default(theta=1000000.0)"
    assert p["layers.0.o_proj"].inputs[0] == "layers.0.attention"
    assert [m["kernel_class"] for m in att.meta["fused_matmuls"]] == ["batched_gemm"] * 2
    assert {"layers.0.q_norm", "layers.0.q_rope", "layers.0.qk", "layers.0.softmax", "layers.0.pv"} <= set(
        att.meta["covers"])
    assert "flash attention" in att.meta["reason"]

    unfused = lower(trace(cfg06, "prefill"), LowerOptions("float16", 4608, 512, fuse_prefill_attention=False))
    assert len(unfused.by_op("softmax")) == 28 and not unfused.by_op("prefill_attention")
    before, after = _slot_bytes(unfused, 512, 4608), _slot_bytes(p, 512, 4608)
    scores = 16 * 512 * 4608 * 4
    assert max(before) == scores and max(after) < scores // 8
    assert sum(after) * 10 < sum(before)  # 300 MiB -> 24 MiB
    # decode keeps its own fusion
    d = lower(trace(cfg06, "decode"), opts)
    assert not d.by_op("prefill_attention") and d.by_op("attention_partial")


@pytest.mark.parametrize("quantize", ["none", "q4"])
def test_pass_packs_prefill_qkv(cfg06, quantize):
    """Prefill's q, k and v GEMMs become one packed GEMM (any storage format): the attention reads
    q from its rows, the k and v cache writes their slices; the three matmuls keep their
    classification. Off, where no GEMM tiling's columns divide the k and v widths (32 at the tiny
    preset), or where another node reads a projection, the three stay."""
    p = lower(trace(cfg06, "prefill"), LowerOptions("float16", 4608, 512, quantize=quantize))
    qkv = p["layers.0.qkv_proj"]
    assert len(p.by_op("fused_gemm")) == 2 * 28  # q | k | v and SwiGLU per layer
    assert qkv.op == "fused_gemm" and qkv.attrs["packed"] and qkv.shape == ("seq", 4096)
    assert qkv.inputs == ["layers.0.attn_norm", *(f"layers.0.self_attn.{x}_proj.weight" for x in "qkv")]
    assert [m["kernel_class"] for m in qkv.meta["fused_matmuls"]] == ["gemm"] * 3
    assert p["layers.0.attention"].attrs["q_packed"]
    kw, vw = p["layers.0.k_cache_write"], p["layers.0.v_cache_write"]
    assert kw.inputs[1] == vw.inputs[1] == qkv.name and kw.attrs["norm_eps"] == 1e-6
    assert (kw.attrs["packed_offset"], vw.attrs["packed_offset"]) == (2048, 3072)
    assert not [n for n in p.nodes() if n.name.endswith((".q_proj", ".k_proj", ".v_proj"))]

    off = lower(trace(cfg06, "prefill"), LowerOptions("float16", 4608, 512, fuse_prefill_qkv=False))
    assert not [n for n in off.by_op("fused_gemm") if n.attrs.get("packed")]
    assert off["layers.0.attention"].inputs[0] == "layers.0.reshape"
    tiny = parse_config(make_config("tiny", "f32"), Path("config.json"))
    assert not [n for n in lower(trace(tiny, "prefill"), LowerOptions("float32", 128, 32)).by_op("fused_gemm")
                if n.attrs.get("packed")]
    g = trace(cfg06, "prefill")  # another reader of layer 0's k projection: that layer keeps three GEMMs
    g.add(Node("probe", "output", ["layers.0.k_proj"], g["layers.0.k_proj"].shape, "float32", {"name": "probe"}))
    p = lower(g, LowerOptions("float16", 4608, 512))
    assert "layers.0.qkv_proj" not in {n.name for n in p.nodes()} and p["layers.1.qkv_proj"].attrs["packed"]
    assert p["layers.0.attention"].inputs[0] == "layers.0.reshape"


def test_unfused_paths_kernels_against_numpy(compiled):
    """The baselines the fusions are timed against, their kernels against numpy:
    ``fuse_prefill_attention=False`` keeps the batched GEMM + softmax path (also what a head_dim the
    kernel does not support compiles to), ``fuse_prefill_swiglu=False`` the gate and up GEMMs +
    silu_mul, ``fuse_attention_combine=False`` decode attention's split merge as its own dispatch."""
    from runtime.compiled import load_compiled
    from tests.test_kernels import check_every_kernel

    module = load_compiled(compiled("tiny-gqa4", "f32", "float32", max_context=704, prefill_chunk=64,
                                    fuse_prefill_attention=False, fuse_prefill_swiglu=False,
                                    fuse_attention_combine=False))
    assert not any(d.node.endswith(".attention") for d in module.manifest.phases["prefill"].dispatches)
    assert "silu_mul" in {d.op for d in module.manifest.phases["prefill"].dispatches}
    assert "attention_combine" in {d.op for d in module.manifest.phases["decode"].dispatches}
    assert {"batched_gemm", "softmax", "attention", "elementwise"} <= check_every_kernel(module, 1e-5)
