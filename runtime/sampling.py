"""Next-token choice from logits, with the knobs Hugging Face and OpenAI define.

Order, as in HF ``generate``: penalties change the logits (also when greedy), then, when sampling,
temperature, top-k, top-p and min-p cut the distribution and one token is drawn.

- ``repetition_penalty`` (HF): every token already present in prompt or output has its logit
  divided by the penalty when positive, multiplied when negative (1.0 = off).
- ``presence_penalty`` / ``frequency_penalty`` (OpenAI): subtract ``presence`` once and
  ``frequency * count`` per earlier occurrence in the *output* (0 = off).
- ``min_p`` (HF): drop tokens whose probability is below ``min_p * p(most likely token)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from common.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. The defaults are greedy with nothing changed; ``Model.generate`` without
    ``sampling`` uses :meth:`from_generation_config` instead, like the CLI."""

    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def from_generation_config(cls, gen: dict, **overrides) -> SamplingParams:
        """The model's own defaults (``generation_config.json``): sampling only when it says
        ``do_sample``; any override that is not None wins."""
        sample = bool(gen.get("do_sample"))
        base = {
            "temperature": float(gen.get("temperature", 1.0)) if sample else 0.0,
            "top_k": int(gen.get("top_k", 0) or 0) if sample else 0,
            "top_p": float(gen.get("top_p", 1.0) or 1.0) if sample else 1.0,
            "min_p": float(gen.get("min_p", 0.0) or 0.0) if sample else 0.0,
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0) or 1.0),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @property
    def plain_argmax(self) -> bool:
        """Greedy on the raw logits (no penalty changes them): the GPU can choose the token."""
        return (self.temperature == 0 and self.repetition_penalty == 1.0 and not self.presence_penalty
                and not self.frequency_penalty)

    def as_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not (0.0 <= self.min_p <= 1.0):
            raise UserError(f"--min-p must be in [0, 1], got {self.min_p}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UserError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not np.isfinite(v) or not -2.0 <= v <= 2.0:
                raise UserError(f"{name} must be in [-2, 2], got {v}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UserError(f"--seed must be in [0, 2**63), got {self.seed}")


class Sampler:
    """Picks tokens for one generation; remembers the prompt and what it picked (for penalties)."""

    def __init__(self, params: SamplingParams, prompt_ids: Iterable[int] = ()) -> None:
        params.validate()
        self.p = params
        self.rng = np.random.default_rng(params.seed)
        self.seen: set[int] = set(prompt_ids) if params.repetition_penalty != 1.0 else set()
        self.out_counts: Counter[int] = Counter()

    def __call__(self, logits: np.ndarray) -> int:
        tok = self._pick(self._penalized(logits))
        if self.p.repetition_penalty != 1.0:
            self.seen.add(tok)
        self.out_counts[tok] += 1
        return tok

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        p = self.p
        if p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty:
            return logits
        x = logits.astype(np.float32, copy=True)
        if p.repetition_penalty != 1.0 and self.seen:
            idx = np.fromiter(self.seen, np.int64)
            v = x[idx]
            x[idx] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self.out_counts:
            idx = np.fromiter(self.out_counts.keys(), np.int64)
            counts = np.fromiter(self.out_counts.values(), np.float32)
            x[idx] -= p.presence_penalty + p.frequency_penalty * counts
        return x

    def _pick(self, logits: np.ndarray) -> int:
        if self.p.temperature == 0:
            return int(np.argmax(logits))
        cand, probs = self.distribution(logits)
        mass = np.cumsum(probs)
        i = int(np.searchsorted(mass, self.rng.random() * mass[-1], side="right"))
        return int(cand[min(i, cand.size - 1)])

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens a sampled pick chooses from and their probabilities (summing to 1), after
        temperature, top-k, top-p and min-p, as HF's logits warpers define them.

        Without sorting the vocabulary: top-k and the top-p nucleus are the logits within a
        margin of the largest (``_head``), sorted alone. A full argsort of a 152k vocabulary costs
        ~10 ms, more than a decode step."""
        p = self.p
        x = np.asarray(logits, np.float32) / np.float32(p.temperature)
        top = float(x.max())
        z = None  # normalizer of the candidates' probabilities (None: their own sum)
        if p.top_k:
            cand = _head(x, top, lambda i: i.size >= p.top_k)[:p.top_k]
        elif p.top_p < 1.0:
            z = float(np.exp(x - top).sum(dtype=np.float64))  # the nucleus is a share of everything
            cand = _head(x, top, lambda i: np.exp(x[i] - top).sum(dtype=np.float64) >= p.top_p * z)
        else:
            cand = np.arange(x.size)
        probs = np.exp(x[cand].astype(np.float64) - top)
        probs /= probs.sum() if z is None else z
        if p.top_p < 1.0:
            keep = min(int(np.searchsorted(np.cumsum(probs), p.top_p) + 1), cand.size)
            cand, probs = cand[:keep], probs[:keep]
        if p.min_p > 0.0:
            kept = probs >= p.min_p * probs.max()
            cand, probs = cand[kept], probs[kept]
        return cand, probs / probs.sum()


def _head(x: np.ndarray, top: float, enough: Callable[[np.ndarray], bool]) -> np.ndarray:
    """The indices of the values within a margin of ``top`` (= x.max()), largest first and ties in
    index order (a prefix of the stable sort of ``-x``), for the smallest margin 1, 2, 4, ... at
    which ``enough`` holds of them; everything sorted if none does."""
    margin = 1.0
    for _ in range(64):
        idx = np.flatnonzero(x >= top - margin)
        if enough(idx) or idx.size == x.size:
            break
        margin *= 2
    else:
        idx = np.arange(x.size)
    return idx[np.lexsort((idx, -x[idx]))]
