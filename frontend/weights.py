"""The tensors a Qwen3 checkpoint holds, named and shaped as HF writes them."""

from __future__ import annotations

from frontend.config import Qwen3Config


def expected_params(cfg: Qwen3Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen3 checkpoint must hold, with its HF shape ([out, in] for linears)."""
    H, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    p: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, H), "model.norm.weight": (H,)}
    for i in range(cfg.num_hidden_layers):
        b = f"model.layers.{i}."
        p.update({
            b + "input_layernorm.weight": (H,), b + "post_attention_layernorm.weight": (H,),
            b + "self_attn.q_proj.weight": (q, H), b + "self_attn.k_proj.weight": (kv, H),
            b + "self_attn.v_proj.weight": (kv, H), b + "self_attn.o_proj.weight": (H, q),
            b + "self_attn.q_norm.weight": (hd,), b + "self_attn.k_norm.weight": (hd,),
            b + "mlp.gate_proj.weight": (I, H), b + "mlp.up_proj.weight": (I, H),
            b + "mlp.down_proj.weight": (H, I),
        })
    if not cfg.tie_word_embeddings:
        p["lm_head.weight"] = (cfg.vocab_size, H)
    return p


def lm_head_param(cfg: Qwen3Config) -> str:
    return "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
