"""Rotary position embedding parameters: one definition of the frequencies every layer reads.

The ``rope`` attribute of a graph node is :meth:`Rope.key`, a canonical string that holds every
number the frequencies depend on. Kernels key their cache on it, the runtime rebuilds the cos/sin
tables from it, and the numpy reference uses the same :func:`tables`, so the GPU, the reference
and the compiled module can never disagree about which RoPE is meant.

The math follows HF transformers' ``ROPE_INIT_FUNCTIONS`` (``_compute_default_rope_parameters``
and ``_compute_yarn_parameters``) step by step in float32, and HF's rotary embedding, which
multiplies cos and sin by the YaRN attention factor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import numpy as np

ROPE_TYPES = ("default", "yarn")


@dataclass(frozen=True)
class Rope:
    """Fully resolved RoPE parameters (every HF default already applied)."""

    type: str
    theta: float
    factor: float = 1.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 1.0
    truncate: bool = True

    def key(self) -> str:
        """``default(theta=1000000.0)`` or ``yarn(theta=...,factor=...,...)``: no ':' inside, so it can
        be part of a ``const:`` name."""
        if self.type == "default":
            return f"default(theta={self.theta!r})"
        vals = ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "type")
        return f"{self.type}({vals})"

    def hf_parameters(self) -> dict[str, object]:
        """transformers-5 ``rope_parameters`` with every value spelled out."""
        if self.type == "default":
            return {"rope_type": "default", "rope_theta": self.theta}
        d: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("type", "theta")}
        return {"rope_type": self.type, "rope_theta": self.theta, **d}

    @staticmethod
    def from_key(key: str) -> Rope:
        m = re.fullmatch(r"(\w+)\((.*)\)", key)
        if not m or m.group(1) not in ROPE_TYPES:
            raise ValueError(f"not a RoPE key: {key!r}")
        kinds = {f.name: f.type for f in fields(Rope)}
        vals: dict[str, object] = {}
        for item in m.group(2).split(","):
            name, _, text = item.partition("=")
            conv = {"float": float, "int": int, "bool": lambda s: s == "True"}[kinds[name]]
            vals[name] = conv(text)
        return Rope(m.group(1), **vals)  # type: ignore[arg-type]

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """float32 [head_dim / 2] inverse frequencies, as HF computes them."""
        exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
        pos_freqs = np.power(np.float32(self.theta), exponent, dtype=np.float32)
        if self.type == "default":
            return (np.float32(1.0) / pos_freqs).astype(np.float32)
        extrapolation = np.float32(1.0) / pos_freqs
        interpolation = np.float32(1.0) / (np.float32(self.factor) * pos_freqs)
        low, high = self._correction_range(head_dim)
        if low == high:
            high += 0.001  # HF: prevent a singular ramp
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
        extrapolation_factor = np.float32(1.0) - ramp.astype(np.float32)
        return (interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor).astype(np.float32)

    def _correction_range(self, dim: int) -> tuple[float, float]:
        """YaRN: the band of dimensions between full extrapolation and full interpolation."""

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(self.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
                2 * math.log(self.theta))

        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        return max(low, 0), min(high, dim - 1)


def tables(positions: np.ndarray, head_dim: int, rope: Rope) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape [len(positions), head_dim] for rotate-half RoPE (HF's layout), scaled by the
    attention factor (1 except for YaRN)."""
    freqs = positions.astype(np.float32)[:, None] * rope.inv_freq(head_dim)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    scale = np.float32(rope.attention_factor)
    return (np.cos(emb) * scale).astype(np.float32), (np.sin(emb) * scale).astype(np.float32)
