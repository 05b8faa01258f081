"""Model shapes for random-weight model directories.

``qwen3-0.6b`` .. ``qwen3-8b`` are the real Qwen3 architectures (shapes from the published
config.json files); the tiny presets cover what the tests must
exercise: GQA ratios 1, 2 and 4, tied and untied lm_head, non-power-of-two vocabularies and a
head_dim that differs from hidden_size / heads (legal in Qwen3). Each tiny preset has its own
``rope_theta`` and ``rms_norm_eps`` so that a reader which loses either field shows in the tests.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                     max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False,
                     max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0),
    # tiny: GQA 2, tied, odd vocab
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=389, tie_word_embeddings=True,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10_000.0),
    # tiny-mha: GQA 1 (plain multi-head), untied lm_head
    "tiny-mha": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=16, vocab_size=300, tie_word_embeddings=False,
                     max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=500_000.0),
    # tiny-gqa4: GQA 4, 3 layers, heads * head_dim != hidden_size
    "tiny-gqa4": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=16, vocab_size=509, tie_word_embeddings=False,
                      max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=1_000_000.0),
    # small: a few layers at moderate width, for quick end-to-end runs on lavapipe
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=32, vocab_size=4099, tie_word_embeddings=True,
                  max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=1_000_000.0),
}

