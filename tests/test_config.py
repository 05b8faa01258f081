"""config.json reading against HF transformers' own config loader and RoPE init functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen3Config as HFConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from common.errors import UserError
from frontend.config import HF_DEFAULTS, load_config, parse_config
from ir.rope import Rope, tables

BASE = dict(model_type="qwen3", vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
PATH = Path("config.json")

ROPES = [  # transformers-5 rope_parameters (transformers-4 rope_scaling gets the same dicts)
    {"rope_type": "default", "rope_theta": 5e5},
    {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 1024},
    {"rope_type": "yarn", "rope_theta": 1e4, "factor": 8.0, "original_max_position_embeddings": 512,
     "beta_fast": 16, "beta_slow": 2, "truncate": False},
    {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0, "original_max_position_embeddings": 2048,
     "mscale": 0.707, "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 1024,
     "attention_factor": 1.5},
    {"rope_type": "yarn", "rope_theta": 1e6, "factor": None, "original_max_position_embeddings": 1024},
]


def _hf_rope(raw: dict) -> tuple[np.ndarray, float]:
    cfg = HFConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    rope_type = cfg.rope_parameters["rope_type"]
    fn = ROPE_INIT_FUNCTIONS[rope_type] if rope_type != "default" else _hf_default
    inv_freq, scale = fn(cfg, torch.device("cpu"))
    return inv_freq.numpy(), float(scale)


def _hf_default(cfg, device):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    return Qwen3RotaryEmbedding.compute_default_rope_parameters(cfg, device=device)


@pytest.mark.parametrize("layout", ["v5", "v4"])
@pytest.mark.parametrize("rope", ROPES, ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items() if k != "rope_type"))
def test_rope_frequencies_equal_hf(rope, layout):
    raw = {**BASE, "rope_parameters": dict(rope)}
    if layout == "v4":
        rest = dict(rope)
        raw = {**BASE, "rope_theta": rest.pop("rope_theta"), "rope_scaling": rest if rest["rope_type"] != "default"
               else None}
    ours = parse_config(json.loads(json.dumps(raw)), PATH).rope
    hf_inv, hf_scale = _hf_rope(json.loads(json.dumps(raw)))
    np.testing.assert_allclose(ours.inv_freq(BASE["head_dim"]), hf_inv, rtol=2e-7, atol=0)
    assert ours.attention_factor == pytest.approx(hf_scale, rel=1e-12)
    cos, _ = tables(np.arange(3000, 3004), BASE["head_dim"], ours)
    ref = np.cos(np.arange(3000, 3004, dtype=np.float32)[:, None] * np.concatenate([hf_inv, hf_inv])) * hf_scale
    np.testing.assert_allclose(cos, ref, atol=2e-6)


@pytest.mark.parametrize("rope", ROPES, ids=str)
def test_key_and_dict_round_trip(rope):
    cfg = parse_config({**BASE, "rope_parameters": dict(rope)}, PATH)
    assert Rope.from_key(cfg.rope.key()) == cfg.rope
    assert parse_config({**cfg.to_dict(), "model_type": "qwen3"}, PATH) == cfg


def test_absent_fields_take_hf_defaults_and_say_so(tmp_path, capsys):
    raw = {k: v for k, v in BASE.items() if k != "num_key_value_heads"}
    raw["num_attention_heads"] = 32  # HF's default kv heads (32) must divide it
    cfg = parse_config(raw, PATH)
    hf = HFConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    assert cfg.rope == Rope("default", hf.rope_parameters["rope_theta"])
    assert (cfg.rms_norm_eps, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (
        hf.rms_norm_eps, hf.num_key_value_heads, hf.tie_word_embeddings)
    assert set(cfg.hf_defaults_used) == {"num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings"}
    assert HF_DEFAULTS["head_dim"] == HFConfig().head_dim

    from frontend.compile import main

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**BASE, "rms_norm_eps": 1e-6}))
    assert main([str(d)]) != 0  # no weights: fails after the config is read
    err = capsys.readouterr().err
    assert "has no 'rope_theta'; using HF Qwen3Config's default 10000.0" in err
    assert "has no 'tie_word_embeddings'" in err and "rms_norm_eps" not in err


UNSUPPORTED = {
    "rope type": ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
                  "rope_parameters.rope_type is 'llama3'; supported: default, yarn"),
    "rope type v4": ({"rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
                     "rope_scaling.rope_type is 'dynamic'"),
    "linear": ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling.rope_type is 'linear'"),
    "sliding window": ({"use_sliding_window": True}, "'use_sliding_window' = True is not supported"),
    "attention bias": ({"attention_bias": True}, "'attention_bias' = True is not supported"),
    "activation": ({"hidden_act": "gelu"}, "'hidden_act' = 'gelu' is not supported"),
    "layer types": ({"layer_types": ["full_attention", "sliding_attention"]},
                    "'layer_types' has 'sliding_attention' layers"),
    "partial rotary": ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
                       "partial_rotary_factor = 0.5 is not supported"),
    "unknown yarn key": ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "low_freq": 1}},
                         "rope_parameters.low_freq is not a YaRN parameter"),
    "awq": ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "'quantization_config' (awq)"),
    "bad theta": ({"rope_theta": "big"}, "field 'rope_theta' must be float, got str"),
    "negative factor": ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": -2.0}},
                        "'rope_parameters.factor' must be positive"),
    "per-layer rope": ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
                       "per-layer-type RoPE parameters"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_fields_are_one_line_errors(name):
    extra, message = UNSUPPORTED[name]
    with pytest.raises(UserError) as e:
        parse_config({**BASE, **extra}, PATH)
    assert message in str(e.value) and "\n" not in str(e.value) and str(PATH) in str(e.value)


def test_load_config_reads_make_model_presets(model_dir):
    """make_model varies eps/theta per preset, so a reader that loses either shows in every test."""
    from frontend.presets import PRESETS

    for preset in ("tiny", "tiny-mha"):
        cfg = load_config(model_dir(preset))
        assert (cfg.rms_norm_eps, cfg.rope.theta) == (PRESETS[preset]["rms_norm_eps"], PRESETS[preset]["rope_theta"])
