"""Model dirs written by HF transformers itself, not by our make_model: our writer cannot reveal
what our reader misses. Each case varies the fields a real checkpoint varies (RoPE base and type,
norm eps, kv heads, tying, file dtype, sharding, config layout of transformers 4.x vs 5.x) and
must give HF's logits and greedy tokens on the GPU (lavapipe in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from frontend.config import load_config
from lowering.module import compile_model
from lowering.options import LowerOptions
from runtime import load
from runtime.sampling import SamplingParams
from tests.hf_oracle import HFOracle, assert_steps_match_hf

SHAPE = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2, head_dim=16,
             max_position_embeddings=128)
CTX = 96


def _peaked_init(model: Qwen3ForCausalLM, seed: int) -> None:
    """HF's 0.02-std init gives near-flat logits whose argmax flips on rounding noise; rescale as
    make_model does (norm weights ~1, projections 1/sqrt(K)) so greedy tokens are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * r if p.ndim == 1 else r if "embed" in name else r / p.shape[1] ** 0.5)


def write_hf_dir(path: Path, dtype: torch.dtype = torch.float32, shard: str | None = None, seed: int = 0,
                 **fields) -> Path:
    """``Qwen3ForCausalLM(Qwen3Config(**fields)).save_pretrained(path)``: the transformers-5 layout."""
    cfg = Qwen3Config(**{**SHAPE, **fields})
    model = Qwen3ForCausalLM(cfg)
    _peaked_init(model, seed)
    model.to(dtype).save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def as_transformers_4(path: Path, rope_scaling: dict | None = None) -> Path:
    """Rewrite config.json as transformers 4.51 wrote it: top-level rope_theta, rope_scaling, torch_dtype."""
    raw = json.loads((path / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    raw.pop("layer_types", None)
    raw["torch_dtype"] = raw.pop("dtype", "float32")
    raw.update(rope_theta=rope["rope_theta"], rope_scaling=rope_scaling, transformers_version="4.51.0")
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    return path


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}

CASES = {  # name -> (writer kwargs, 4.x rewrite?, tolerance)
    "v5-theta1e4-eps1e-5-gqa2-tied-f32": (dict(num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                               tie_word_embeddings=True, rope_parameters={"rope_theta": 1e4}),
                                          None, 1e-4),
    "v5-theta5e5-mqa-untied-bf16-sharded": (dict(num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6,
                                                 rope_parameters={"rope_theta": 5e5}, dtype=torch.bfloat16,
                                                 shard="30KB"), None, 1e-4),
    "v5-theta1e6-mha-f16": (dict(num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
                                 rope_parameters={"rope_theta": 1e6}, dtype=torch.float16), None, 1e-4),
    "v5-yarn-gqa4-untied": (dict(num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                                 rope_parameters={**YARN, "rope_theta": 1e4}), None, 1e-4),
    "v4-theta5e5-eps1e-5": (dict(num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                 rope_parameters={"rope_theta": 5e5}), "plain", 1e-4),
    "v4-yarn-type-key": (dict(num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                              rope_parameters={**YARN, "rope_theta": 1e6}), "yarn", 1e-4),
}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    made: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            kwargs, v4, _ = CASES[name]
            d = write_hf_dir(tmp_path_factory.mktemp(name) / "model", seed=len(made), **kwargs)
            if v4:  # 4.x spelled the YaRN dict with "type", and kept it in rope_scaling
                as_transformers_4(d, {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
                                  if v4 == "yarn" else None)
            out = d.with_suffix(".vkmod")
            compile_model(d, out, LowerOptions("float32", CTX, 32, tuning_candidates=False), log=lambda *_: None)
            made[name] = (d, out)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_hf_written_dir_matches_hf(hf_dirs, name):
    d, out = hf_dirs(name)
    model = load(out)
    kv = model.module.manifest.kv_cache.dtype  # HF's cache rounded as ours: the comparison stays tight
    # 40 tokens: past the YaRN cases' original_max_position_embeddings (32), in two prefill chunks
    prompt = [int(x) for x in np.random.default_rng(3).integers(0, SHAPE["vocab_size"], 40)]
    assert_steps_match_hf(model, HFOracle(d, kv_dtype=kv), prompt, 12, CASES[name][2])
    ours = list(model.generate(prompt[:7], 24, SamplingParams(0.0)))
    assert ours == HFOracle(d, kv_dtype=kv).greedy(prompt[:7], 24)


def test_config_fields_are_read_not_defaulted(hf_dirs):
    """What the reader took from each file is what HF's own config loader took."""
    from transformers import AutoConfig

    for name in CASES:
        d, _ = hf_dirs(name)
        ours, theirs = load_config(d), AutoConfig.from_pretrained(d)
        assert ours.rms_norm_eps == theirs.rms_norm_eps
        assert ours.rope.theta == theirs.rope_parameters["rope_theta"]
        assert ours.rope.type == theirs.rope_parameters["rope_type"]
        assert ours.num_key_value_heads == theirs.num_key_value_heads
        assert ours.tie_word_embeddings == theirs.tie_word_embeddings
        assert not ours.hf_defaults_used
