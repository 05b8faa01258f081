"""ir: verifier, printer, JSON round trip, DOT; the traced qwen3-0.6b graphs have the expected ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontend.config import parse_config
from frontend.make_model import make_config
from frontend.qwen3 import trace
from ir.dot import to_dot
from ir.graph import Node
from ir.printer import to_text
from ir.serialize import from_json, to_json
from ir.verify import GraphError, verify


@pytest.fixture(scope="module")
def cfg06():
    return parse_config(make_config("qwen3-0.6b", "bf16"), Path("config.json"))


def test_decode_graph_counts(cfg06):
    g = trace(cfg06, "decode")
    text = to_text(g)
    mm = g.by_op("matmul")
    weight_mm = [n for n in mm if len(n.shape) == 2]
    assert len(weight_mm) == 28 * 7 + 1  # q/k/v/o/gate/up/down per layer + lm_head
    assert len(mm) - len(weight_mm) == 28 * 2  # QK^T and PV per layer
    assert len(g.by_op("rms_norm")) == 28 * 4 + 1  # input, post-attn, q_norm, k_norm; final norm
    assert len(g.by_op("rope")) == 56 and len(g.by_op("kv_cache_write")) == 56
    assert ("%layers.0.q_proj: float32[1,2048] = matmul(%layers.0.attn_norm, %layers.0.self_attn.q_proj.weight, "
            "transpose_b=True)") in text
    assert "%lm_head: float32[1,151936]" in text
    assert all(n.shape[0] == 1 for n in weight_mm)


def test_prefill_graph_is_symbolic(cfg06):
    g = trace(cfg06, "prefill")
    assert g["layers.0.q_proj"].shape == ("seq", 2048)
    assert g["layers.0.qk"].shape == (1, 16, "seq", "total")
    assert g["lm_head"].shape == (1, 151936) and g[g["lm_head"].inputs[0]].op == "take_last"


def test_json_roundtrip_and_dot(cfg06):
    g = trace(cfg06, "prefill")
    g2 = from_json(to_json(g))
    verify(g2)
    assert to_text(g2) == to_text(g)
    dot = to_dot(g)
    assert dot.startswith('digraph "prefill"') and '"layers.0.q_proj" -> ' in dot


def test_verifier_rejects_bad_graphs(cfg06):
    g = trace(cfg06, "decode")
    bad = g.copy()
    bad["layers.0.q_proj"].shape = (1, 7)
    with pytest.raises(GraphError, match="layers.0.q_proj"):
        verify(bad)
    bad = g.copy()
    bad.add(Node("dangling", "add", ["nope", "embed"], (1, 1024), "float32"))
    with pytest.raises(GraphError, match="nope"):
        verify(bad)
    bad = g.copy()
    bad["embed"].op = "frobnicate"
    with pytest.raises(GraphError, match="unknown op"):
        verify(bad)


def test_reference_has_one_rule_per_op():
    from ir.ops import LEAF_OPS, OPS
    from ir.reference import RULES

    assert set(RULES) == set(OPS) - LEAF_OPS
