"""Next-token choice from logits: greedy (temperature 0) or temperature / top-k / top-p sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frontend.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        params.validate()
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.p.temperature == 0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / self.p.temperature
        order = np.argsort(-x, kind="stable")
        if self.p.top_k:
            order = order[: self.p.top_k]
        probs = np.exp(x[order] - x[order[0]])
        probs /= probs.sum()
        if self.p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.p.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])
