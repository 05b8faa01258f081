"""Lowering: matmul classification counts, weight splitting, fusion, compile + dump of qwen3-0.6b."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.errors import UserError
from frontend.config import parse_config
from frontend.make_model import make_config
from frontend.qwen3 import trace
from frontend.weights import expected_params
from ir.graph import Node
from lowering.classify import classify_matmuls
from lowering.dump import dump
from lowering.module import compile_model
from lowering.options import LowerOptions
from lowering.pipeline import lower
from lowering.plan import plan_memory


def _counts(g):
    out: dict[str, int] = {}
    for n in g.by_op("matmul"):
        if "split_of" in n.meta and not n.name.endswith(f"[0:{n.shape[1]}]"):
            continue
        out[n.attrs["kernel_class"]] = out.get(n.attrs["kernel_class"], 0) + 1
    return out


@pytest.fixture(scope="module")
def cfg06():
    return parse_config(make_config("qwen3-0.6b", "bf16"), Path("config.json"))


def test_classification_counts(cfg06):
    d = classify_matmuls(trace(cfg06, "decode"))
    assert _counts(d) == {"gemv": 197, "batched_gemv": 56}
    p = classify_matmuls(trace(cfg06, "prefill"))
    # the prefill lm_head only sees the last position (take_last): a GEMV, and its reason says so
    assert _counts(p) == {"gemm": 196, "gemv": 1, "batched_gemm": 56}
    assert "take_last" in p["lm_head"].meta["reason"]
    assert "GQA group 2" in d["layers.3.qk"].meta["reason"]


def test_unsupported_matmul_is_a_compile_error(cfg06):
    g = trace(cfg06, "decode")
    g.add(Node("weird", "matmul", ["embed", "layers.0.attn_norm"], (1, 1), "float32"))
    with pytest.raises(UserError, match="node weird: matmul .* matches no GPU kernel class"):
        classify_matmuls(g)


def test_split_and_fusion(cfg06):
    g = lower(trace(cfg06, "decode"), LowerOptions("float16", 256, 32))
    # 151936 x 1024 f16 = 311 MB > 128 MiB: three row chunks, gathered by one kernel
    assert len(g["embed"].inputs) == 1 + 3
    assert g["lm_head"].op == "concat" and len(g["lm_head"].inputs) == 3
    assert g["layers.0.o_proj"].attrs["epilogue"] == "add"
    # decode: gate/up/silu*mul is one SwiGLU GEMV; every RMSNorm feeding GEMVs is their prologue
    assert not g.by_op("silu") and not g.by_op("silu_mul") and not g.by_op("rms_norm")
    assert g["layers.0.mul"].attrs["swiglu"] and g["layers.0.qkv_proj"].attrs["norm_eps"] == 1e-6
    assert len(g.by_op("fused_gemv")) == 28 + 3  # SwiGLU per layer; 3 lm_head chunks
    # q, k, v: one GEMV with a packed output; v's rows also go to the cache (no kernel of its own)
    assert len(g.by_op("qkv_gemv")) == 28 and g["layers.0.v_cache_write"].attrs["written_by"] == "layers.0.qkv_proj"
    assert [m["name"] for m in g["layers.0.qkv_proj"].meta["fused_matmuls"]] == [
        "layers.0.q_proj", "layers.0.k_proj", "layers.0.v_proj"]
    assert not g.by_op("rms_norm_rope")  # q's is the attention prologue, k's is fused into its cache write
    assert g["layers.0.pv"].attrs["q_norm_eps"] == 1e-6
    # the producers of the cache rows write the cache: K's norm+RoPE (from the packed row), V's GEMV
    kw = g["layers.0.k_cache_write"].attrs
    assert kw["rope"] == "default(theta=1000000.0)" and kw["packed_offset"] == 2048
    # decode: layout-only transposes become views; QK^T, softmax, PV become one attention kernel over
    # splits of the cache (flash-decoding), whose partials the kernel's last workgroup per kv head merges
    assert not g.by_op("transpose") and not g.by_op("softmax") and not g.by_op("attention")
    assert len(g.by_op("attention_partial")) == len(g.by_op("attention_combine")) == 28
    assert [m["kernel_class"] for m in g["layers.0.pv"].meta["fused_matmuls"]] == ["batched_gemv"] * 2
    # GQA group 2: up to 128 splits of >= 32 positions (LowerOptions.decode_splits)
    assert g["layers.0.pv"].shape == (16, 128, 128 + 8) and g["layers.0.pv"].attrs["split_unit"] == 32
    assert g["layers.0.pv.combine"].shape == (1, 16, 1, 128)
    assert g["layers.0.reshape_4"].inputs == ["layers.0.pv.combine"]
    # ... in its last workgroup per kv head: the combine node stays, written by the partial's kernel
    assert g["layers.0.pv.combine"].attrs["written_by"] == "layers.0.pv"
    assert g["layers.0.pv"].attrs["combine"] == "layers.0.pv.combine"
    tensors, _, _ = plan_memory(g, {"seq": 1, "total": 256, "ctx": 256}, expected_params(cfg06))
    # born at the kernel that writes it: no slot that kernel reads or writes besides
    assert tensors["layers.0.pv.combine"].slot not in {tensors[n].slot for n in ("layers.0.qkv_proj", "layers.0.pv")}
    # the KV cache is stored in f16 by default: the cache, its writes and views carry the dtype
    assert {g[n].dtype for n in ("cache_k.0", "layers.0.k_cache_write", "layers.0.k_all")} == {"float16"}


def test_decode_split_sizes_follow_the_gqa_group_unless_given():
    assert LowerOptions().decode_splits(1) == LowerOptions().decode_splits(2) == (32, 128)
    assert LowerOptions().decode_splits(4) == (64, 64)
    assert LowerOptions(attention_splits=16).decode_splits(2) == (32, 16)
    assert LowerOptions(attention_split_unit=8).decode_splits(8) == (8, 64)


def test_kv_dtype_and_unsplit_attention_options(cfg06):
    g = lower(trace(cfg06, "decode"), LowerOptions("float16", 256, 32, kv_dtype="float32", attention_splits=1))
    assert len(g.by_op("attention")) == 28 and not g.by_op("attention_partial")
    assert g["cache_v.3"].dtype == g["layers.3.v_all"].dtype == "float32"
    p = lower(trace(cfg06, "prefill"), LowerOptions("float16", 256, 32))
    assert not p.by_op("attention_partial")  # prefill: its own fused kernel (no splits)
    assert p["layers.0.attention"].op == "prefill_attention" and p["layers.0.k_all"].dtype == "float16"


@pytest.mark.parametrize("quantize", ["none", "q4"])
def test_prefill_swiglu_is_one_gemm(cfg06, quantize):
    """Prefill: each layer's gate GEMM, up GEMM and silu_mul become one ``fused_gemm`` over both
    weights (any storage format) that feeds down_proj; both matmuls keep their classification.
    Decode keeps its SwiGLU GEMV; a gate GEMM that another node also reads stays unfused."""
    p = lower(trace(cfg06, "prefill"), LowerOptions("float16", 4608, 512, quantize=quantize))
    swiglus = [n for n in p.by_op("fused_gemm") if n.attrs.get("swiglu")]
    assert len(swiglus) == 28 and not p.by_op("silu_mul") and not p.by_op("silu")
    f = p["layers.0.mul"]
    assert f.inputs == ["layers.0.mlp_norm", "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight"]
    assert f.attrs == {"swiglu": True, "kernel_class": "gemm"} and f.shape == ("seq", 3072)
    assert [(m["name"], m["kernel_class"]) for m in f.meta["fused_matmuls"]] == [
        ("layers.0.gate_proj", "gemm"), ("layers.0.up_proj", "gemm")]
    assert f.meta["covers"] == ["layers.0.gate_proj", "layers.0.up_proj", "layers.0.silu", "layers.0.mul"]
    assert "SwiGLU" in f.meta["reason"] and p["layers.0.down_proj"].inputs[0] == "layers.0.mul"
    assert not any(m.name.endswith(("gate_proj", "up_proj")) for m in p.by_op("matmul"))
    d = lower(trace(cfg06, "decode"), LowerOptions("float16", 4608, 512, quantize=quantize))
    assert not d.by_op("fused_gemm") and d["layers.0.mul"].op == "fused_gemv"

    g = trace(cfg06, "prefill")  # another reader of layer 0's gate: that layer keeps three kernels
    g.add(Node("probe", "output", ["layers.0.gate_proj"], g["layers.0.gate_proj"].shape, "float32",
               {"name": "probe"}))
    p = lower(g, LowerOptions("float16", 4608, 512))
    assert p["layers.0.mul"].op == "silu_mul" and p["layers.1.mul"].op == "fused_gemm"
    p = lower(trace(cfg06, "prefill"), LowerOptions("float16", 4608, 512, fuse_prefill_swiglu=False))
    assert len(p.by_op("silu_mul")) == 28 and not [n for n in p.by_op("fused_gemm") if n.attrs.get("swiglu")]


def test_compile_qwen06b_and_dump(qwen06b, tmp_path):
    out = tmp_path / "m.vkmod"
    t0 = time.perf_counter()
    compile_model(qwen06b, out, LowerOptions("float16", 512, 64, tuning_candidates=False))
    first = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    assert man["requires"]["limits"]["max-storage-buffer-binding-size"] <= 128 * 2**20
    t0 = time.perf_counter()
    compile_model(qwen06b, out, LowerOptions("float16", 512, 64, tuning_candidates=False), force=True)
    second = time.perf_counter() - t0
    print(f"qwen3-0.6b compile: first {first:.1f}s, cached {second:.1f}s")
    dec = json.loads(dump(out, "decode", "json"))
    assert dec["summary"]["matmuls_by_class"] == {"gemv": 197, "gemm": 0, "batched_gemv": 56, "batched_gemm": 0}
    pre = json.loads(dump(out, "prefill", "json"))
    assert pre["summary"]["matmuls_by_class"] == {"gemv": 1, "gemm": 196, "batched_gemv": 0, "batched_gemm": 56}
    node = next(n for n in dec["nodes"] if n["name"] == "layers.0.down_proj")
    assert node["kernel_class"] == "gemv" and node["kernel"] and node["covers"] == ["layers.0.down_proj",
                                                                                     "layers.0.add_1"]
    assert all(n["kernel"] or n["written_by"] for n in dec["nodes"] if n["op"] not in (
        "input", "weight", "reshape", "output", "kv_cache_read"))
    text = dump(out, "decode", "text")
    assert "# summary decode: gemv=197" in text
    assert dump(out, "prefill", "dot").startswith("digraph")


def test_launch_grid_from_lowered_thread_extents():
    """The grid is the lowered kernel's blockIdx extents, converted PrimExpr -> common.expr tree."""
    from tvm import tirx

    from lowering.build import _to_expr

    seq, total = tirx.Var("seq", "int32"), tirx.Var("total", "int32")
    assert _to_expr(tirx.floordiv(seq + 31, 32) * 4) == ["*", ["//", ["+", "seq", 31], 32], 4]
    assert _to_expr(tirx.max(tirx.Cast("int64", total) % 3, tirx.min(seq - 1, 7))) == \
        ["max", ["%", "total", 3], ["min", ["-", "seq", 1], 7]]
    with pytest.raises(RuntimeError, match="not a supported expression"):
        _to_expr(tirx.Var("n", "int32") + 1)  # not a runtime scalar
    with pytest.raises(RuntimeError, match="not a supported expression"):
        _to_expr(tirx.truncdiv(seq, 2))  # C division: not the runtime's floor division
