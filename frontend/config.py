"""Qwen3 config.json: load, validate, and the derived numbers the model needs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from ir.rope import ROPE_TYPES, Rope

_REQUIRED_INT = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                 "max_position_embeddings")

# Defaults of HF transformers' Qwen3Config (4.51 and 5.x agree on each) for fields a config.json may
# omit. HF applies them silently; we apply the same values (the oracle's numbers) and report each.
HF_DEFAULTS: dict[str, Any] = {"head_dim": 128, "num_key_value_heads": 32, "rms_norm_eps": 1e-6,
                               "rope_theta": 10_000.0, "tie_word_embeddings": False}

# Fields whose other values change the math in ways this compiler does not implement: field -> the
# values we accept (absent is accepted too: HF's default for each is in the set).
_MUST_BE: dict[str, tuple[Any, ...]] = {"hidden_act": ("silu",), "attention_bias": (False,),
                                        "use_sliding_window": (False,), "partial_rotary_factor": (1, 1.0)}

_YARN_KEYS = {"rope_type", "type", "rope_theta", "factor", "original_max_position_embeddings", "attention_factor",
              "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate", "partial_rotary_factor"}


@dataclass(frozen=True)
class Qwen3Config:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: Rope
    tie_word_embeddings: bool
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    hf_defaults_used: tuple[str, ...] = field(default=(), compare=False)

    @property
    def gqa_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict[str, Any]:
        """A transformers-5 style config that :func:`parse_config` reads back to an equal config."""
        d = asdict(self)
        del d["rope"], d["hf_defaults_used"]
        return {**d, "rope_parameters": self.rope.hf_parameters()}


def _typed(v: Any, key: str, kind: type, path: Path) -> Any:
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok or (kind is float and not math.isfinite(v)):
        what = "true or false" if kind is bool else kind.__name__
        raise UserError(f"{path}: field '{key}' must be {what}, got {type(v).__name__} {v!r}")
    return v


def _field(raw: dict[str, Any], key: str, kind: type, path: Path, used: list[str] | None = None) -> Any:
    """``raw[key]`` type-checked; absent (or null) takes HF's default when it has one (noted in ``used``),
    and is an error otherwise."""
    if raw.get(key) is None:
        if used is None or key not in HF_DEFAULTS:
            raise UserError(f"{path}: missing required field '{key}'")
        used.append(key)
        return HF_DEFAULTS[key]
    return _typed(raw[key], key, kind, path)


def _positive(v: float, key: str, path: Path) -> None:
    if v <= 0:
        raise UserError(f"{path}: field '{key}' must be positive, got {v}")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _rope(raw: dict[str, Any], path: Path, used: list[str]) -> Rope:
    """RoPE from either layout, merged as transformers 5 does: ``rope_scaling`` (4.x) wins over
    ``rope_parameters`` (5.x); a ``rope_theta`` inside the dict wins over the top-level one."""
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    params = raw.get(key) or {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: field '{key}' must be an object, got {params!r}")
    where = f"{key}."
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UserError(f"{path}: {where}rope_type is {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    if any(isinstance(v, dict) for v in params.values()):
        raise UserError(f"{path}: '{key}' holds per-layer-type RoPE parameters, which Qwen3 does not use")
    if "partial_rotary_factor" in params and params["partial_rotary_factor"] not in (1, 1.0):
        raise UserError(f"{path}: {where}partial_rotary_factor = {params['partial_rotary_factor']!r} is not "
                        "supported (expected 1.0)")
    if "rope_theta" in params:
        theta = _typed(params["rope_theta"], where + "rope_theta", float, path)
    else:
        theta = _field(raw, "rope_theta", float, path, used)
    _positive(theta, "rope_theta", path)
    if rope_type == "default":
        return Rope("default", theta)
    unknown = sorted(set(params) - _YARN_KEYS)
    if unknown:
        raise UserError(f"{path}: {where}{unknown[0]} is not a YaRN parameter this compiler implements")
    # as transformers' standardize_rope_params: a top-level original_max_position_embeddings wins
    omax = raw.get("original_max_position_embeddings", params.get("original_max_position_embeddings"))
    omax = raw["max_position_embeddings"] if omax is None else _typed(omax, where + "original_max_position_embeddings",
                                                                       int, path)
    _positive(omax, "original_max_position_embeddings", path)
    factor = params.get("factor")
    factor = raw["max_position_embeddings"] / omax if factor is None else _typed(factor, where + "factor", float, path)
    _positive(factor, where + "factor", path)

    def opt(name: str) -> float | None:
        v = params.get(name)
        return None if v is None else _typed(v, where + name, float, path)

    attention_factor, mscale, mscale_all_dim = opt("attention_factor"), opt("mscale"), opt("mscale_all_dim")
    if attention_factor is None:
        attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else _yarn_mscale(factor))
    truncate = _typed(params.get("truncate", True), where + "truncate", bool, path)
    return Rope("yarn", theta, float(factor), omax, opt("beta_fast") or 32.0, opt("beta_slow") or 1.0,
                float(attention_factor), truncate)


def _check_unsupported(raw: dict[str, Any], path: Path, layers: int) -> None:
    for key, allowed in _MUST_BE.items():
        if key in raw and raw[key] not in allowed:
            raise UserError(f"{path}: '{key}' = {raw[key]!r} is not supported (expected {allowed[0]!r} or unset)")
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise UserError(f"{path}: field 'layer_types' must be a list of {layers} entries, got {layer_types!r}")
        other = sorted({t for t in layer_types if t != "full_attention"}, key=str)
        if other:
            raise UserError(f"{path}: 'layer_types' has {other[0]!r} layers; only 'full_attention' is supported")
    if raw.get("quantization_config") is not None:
        q = raw["quantization_config"]
        method = q.get("quant_method", "?") if isinstance(q, dict) else q
        raise UserError(f"{path}: 'quantization_config' ({method}): pre-quantized checkpoints are not supported; "
                        "use a bf16/f16/f32 checkpoint (compile it with --quantize q4 or q8 to quantize it)")


def parse_config(raw: Any, path: Path) -> Qwen3Config:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    mt = raw.get("model_type")
    if mt != "qwen3":
        raise UserError(f"{path}: model_type is {mt!r}, expected 'qwen3' (only Qwen3 dense models are supported)")
    vals = {k: _field(raw, k, int, path) for k in _REQUIRED_INT}
    for k, v in vals.items():
        _positive(v, k, path)
    used: list[str] = []
    heads = vals["num_attention_heads"]
    kv = _field(raw, "num_key_value_heads", int, path, used)
    _positive(kv, "num_key_value_heads", path)
    if heads % kv:
        raise UserError(f"{path}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
    head_dim = _field(raw, "head_dim", int, path, used)
    if head_dim <= 0 or head_dim % 2:
        raise UserError(f"{path}: field 'head_dim' must be a positive even number (RoPE), got {head_dim}")
    eps = _field(raw, "rms_norm_eps", float, path, used)
    _positive(eps, "rms_norm_eps", path)
    _check_unsupported(raw, path, vals["num_hidden_layers"])
    rope = _rope(raw, path, used)
    tie = _field(raw, "tie_word_embeddings", bool, path, used)
    dtype = raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"{path}: torch_dtype {dtype!r} is not supported (expected bfloat16, float16 or float32)")
    return Qwen3Config(num_key_value_heads=kv, head_dim=head_dim, rms_norm_eps=eps, rope=rope,
                       tie_word_embeddings=tie, torch_dtype=dtype, bos_token_id=raw.get("bos_token_id"),
                       eos_token_id=raw.get("eos_token_id"), hf_defaults_used=tuple(used), **vals)


def default_notes(cfg: Qwen3Config, path: Path) -> list[str]:
    """One line per field HF's default was taken for: never silent."""
    return [f"note: {path} has no '{k}'; using HF Qwen3Config's default {HF_DEFAULTS[k]!r}"
            for k in cfg.hf_defaults_used]


def load_config(model_dir: str | Path) -> Qwen3Config:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a directory (expected a Hugging Face Qwen3 model directory)")
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing (expected the model's config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return parse_config(raw, path)
