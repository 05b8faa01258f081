"""Qwen3 config.json: load, validate, and the derived numbers the model needs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from frontend.errors import UserError

_REQUIRED_INT = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size", "max_position_embeddings")


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
    rope_theta: float
    tie_word_embeddings: bool
    torch_dtype: str = "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    @property
    def gqa_group(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field(raw: dict[str, Any], key: str, kind: type, path: Path, default: Any = None) -> Any:
    if key not in raw:
        if default is not None:
            return default
        raise UserError(f"{path}: missing required field '{key}'")
    v = raw[key]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok:
        raise UserError(f"{path}: field '{key}' must be {kind.__name__}, got {type(v).__name__} {v!r}")
    return v


def parse_config(raw: Any, path: Path) -> Qwen3Config:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    mt = raw.get("model_type")
    if mt != "qwen3":
        raise UserError(f"{path}: model_type is {mt!r}, expected 'qwen3' (only Qwen3 dense models are supported)")
    vals = {k: _field(raw, k, int, path) for k in _REQUIRED_INT}
    for k, v in vals.items():
        if v <= 0:
            raise UserError(f"{path}: field '{k}' must be positive, got {v}")
    heads, kv = vals["num_attention_heads"], vals["num_key_value_heads"]
    if heads % kv:
        raise UserError(f"{path}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if vals["hidden_size"] % heads:
            raise UserError(f"{path}: no 'head_dim' and hidden_size is not divisible by num_attention_heads")
        head_dim = vals["hidden_size"] // heads
    head_dim = _field({"head_dim": head_dim}, "head_dim", int, path)
    if head_dim <= 0 or head_dim % 2:
        raise UserError(f"{path}: field 'head_dim' must be a positive even number (RoPE), got {head_dim}")
    eps = _field(raw, "rms_norm_eps", float, path, 1e-6)
    theta = _field(raw, "rope_theta", float, path, 1_000_000.0)
    if eps <= 0 or theta <= 0:
        raise UserError(f"{path}: rms_norm_eps and rope_theta must be positive")
    for key, bad in (("rope_scaling", lambda v: v not in (None, {})), ("attention_bias", bool),
                     ("use_sliding_window", bool)):
        if key in raw and bad(raw[key]):
            raise UserError(f"{path}: '{key}' = {raw[key]!r} is not supported (expected it unset or off)")
    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise UserError(f"{path}: field 'tie_word_embeddings' must be true or false, got {tie!r}")
    dtype = raw.get("torch_dtype", raw.get("dtype", "bfloat16"))
    if dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"{path}: torch_dtype {dtype!r} is not supported (expected bfloat16, float16 or float32)")
    return Qwen3Config(head_dim=head_dim, rms_norm_eps=eps, rope_theta=theta, tie_word_embeddings=tie,
                       torch_dtype=dtype, bos_token_id=raw.get("bos_token_id"),
                       eos_token_id=raw.get("eos_token_id"), **vals)


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
