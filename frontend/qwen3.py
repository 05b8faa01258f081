"""Qwen3's forward pass, written once against the tracing API and traced per phase.

Phases: ``prefill`` (``seq`` symbolic, any past length) and ``decode`` (``seq = 1``). Runtime
scalars are ``seq`` (new tokens) and ``total`` (past + new); ``past`` is ``total - seq``. The KV
cache of each layer is an explicit graph input ``cache_k.i`` / ``cache_v.i`` of capacity ``ctx``
and an explicit output (the same buffer, updated in place on the GPU).
"""

from __future__ import annotations

import math

from frontend import tracer as F
from frontend.config import Qwen3Config
from frontend.weights import lm_head_param
from ir.graph import Graph
from ir.verify import verify

PHASES = ("prefill", "decode")


def trace(cfg: Qwen3Config, phase: str, all_logits: bool = False) -> Graph:
    """Trace one phase. ``all_logits`` keeps logits for every prompt position (tests compare them
    with HF); by default prefill computes the lm_head for the last position only. Weights and KV
    caches are traced as float32 (the math); how they are stored is lowering's choice."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    seq = "seq" if phase == "prefill" else 1
    H, hd = cfg.hidden_size, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    tr = F.Tracer(phase, {"model": "qwen3", "dims": {"seq": seq, "total": "seq+past", "ctx": "capacity"}})

    def w(param: str, shape: tuple[int, ...]) -> F.Proxy:
        return tr.leaf("weight", param.removeprefix("model."), shape, "float32", param=param)

    ids = tr.leaf("input", "input_ids", (seq,), "int32", role="token_ids")
    x = F.embedding(ids, w("model.embed_tokens.weight", (cfg.vocab_size, H)))
    caches: list[tuple[str, F.Proxy]] = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        cache_k = tr.leaf("input", f"cache_k.{i}", (nkv, "ctx", hd), "float32", role="kv_cache")
        cache_v = tr.leaf("input", f"cache_v.{i}", (nkv, "ctx", hd), "float32", role="kv_cache")
        with tr.scope(f"layers.{i}"):
            h = F.rms_norm(x, w(p + "input_layernorm.weight", (H,)), cfg.rms_norm_eps, "attn_norm")
            q = F.linear(h, w(p + "self_attn.q_proj.weight", (nh * hd, H)), "q_proj").reshape(seq, nh, hd)
            k = F.linear(h, w(p + "self_attn.k_proj.weight", (nkv * hd, H)), "k_proj").reshape(seq, nkv, hd)
            v = F.linear(h, w(p + "self_attn.v_proj.weight", (nkv * hd, H)), "v_proj").reshape(seq, nkv, hd)
            q = F.rope(F.rms_norm(q, w(p + "self_attn.q_norm.weight", (hd,)), cfg.rms_norm_eps, "q_norm"),
                       cfg.rope.key(), "q_rope")
            k = F.rope(F.rms_norm(k, w(p + "self_attn.k_norm.weight", (hd,)), cfg.rms_norm_eps, "k_norm"),
                       cfg.rope.key(), "k_rope")
            kc = F.kv_cache_write(cache_k, k, "k_cache_write")
            vc = F.kv_cache_write(cache_v, v, "v_cache_write")
            caches += [(f"cache_k.{i}", kc), (f"cache_v.{i}", vc)]
            q4 = q.transpose(1, 0, 2).reshape(1, nh, seq, hd)
            scores = F.matmul(q4, F.kv_cache_read(kc, "k_all"), "qk", transpose_b=True, gqa_group=cfg.gqa_group)
            probs = F.softmax(scores, scale=1.0 / math.sqrt(hd), causal=True)
            attn = F.matmul(probs, F.kv_cache_read(vc, "v_all"), "pv", gqa_group=cfg.gqa_group)
            attn = attn.reshape(nh, seq, hd).transpose(1, 0, 2).reshape(seq, nh * hd)
            x = x + F.linear(attn, w(p + "self_attn.o_proj.weight", (H, nh * hd)), "o_proj")
            h = F.rms_norm(x, w(p + "post_attention_layernorm.weight", (H,)), cfg.rms_norm_eps, "mlp_norm")
            gate = F.linear(h, w(p + "mlp.gate_proj.weight", (cfg.intermediate_size, H)), "gate_proj")
            up = F.linear(h, w(p + "mlp.up_proj.weight", (cfg.intermediate_size, H)), "up_proj")
            x = x + F.linear(F.silu(gate) * up, w(p + "mlp.down_proj.weight", (H, cfg.intermediate_size)),
                             "down_proj")
    x = F.rms_norm(x, w("model.norm.weight", (H,)), cfg.rms_norm_eps, "final_norm")
    if phase == "prefill" and not all_logits:
        x = F.take_last(x)
    F.output(F.linear(x, w(lm_head_param(cfg), (cfg.vocab_size, H)), "lm_head"), "logits")
    for name, c in caches:
        F.output(c, name)
    verify(tr.graph)
    return tr.graph
