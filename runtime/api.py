"""Python API: ``model = runtime.load(compiled_dir)``; ``for tok in model.generate(ids): ...``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frontend.errors import UserError
from frontend.weights import WeightStore
from runtime.compiled import CompiledModule, load_compiled
from runtime.device import open_device
from runtime.executor import Executor, StepProfile
from runtime.sampling import Sampler, SamplingParams


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    profiles: list[StepProfile] = field(default_factory=list)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from the prefill logits
        return steps / self.decode_s if self.decode_s else 0.0


class Model:
    def __init__(self, module: CompiledModule, model_dir: Path, adapter: str | None, verbose: bool) -> None:
        from frontend.config import parse_config

        self.module = module
        self.model_dir = model_dir
        cfg = parse_config({**module.config, "model_type": "qwen3"}, module.path / "manifest.json")
        weights = WeightStore(model_dir, cfg)
        if weights.fingerprint() != module.manifest["weights_fingerprint"]:
            raise UserError(f"{model_dir}: weights changed since {module.path} was compiled (fingerprint "
                            "mismatch); recompile with python -m frontend.compile")
        self.device = open_device(adapter, module.manifest["requires"])
        self.executor = Executor(module, str(model_dir), self.device, weights, verbose)
        self.config = cfg
        self.max_context = module.options["max_context"]
        self.last_stats = GenerationStats()
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from runtime.text import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def generate(self, prompt_ids: list[int], max_new_tokens: int = 32, sampling: SamplingParams | None = None,
                 stop_ids: set[int] | frozenset[int] = frozenset(), profile: bool = False) -> Iterator[int]:
        """Yield new token ids; stops after ``max_new_tokens`` or a token in ``stop_ids``."""
        if not prompt_ids:
            raise UserError("the prompt is empty (it must have at least one token)")
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        if len(prompt_ids) + max_new_tokens > self.max_context:
            raise UserError(f"prompt ({len(prompt_ids)} tokens) + max new tokens ({max_new_tokens}) = "
                            f"{len(prompt_ids) + max_new_tokens} exceeds the compiled context of {self.max_context} "
                            "tokens (recompile with a larger --max-context)")
        vocab = self.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise UserError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        sampler = Sampler(sampling or SamplingParams())
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids))
        ex = self.executor
        t0 = time.perf_counter()
        total = 0
        for start in range(0, len(prompt_ids), ex.chunk):
            chunk = np.asarray(prompt_ids[start:start + ex.chunk], np.int32)
            total += len(chunk)
            logits, prof = ex.step("prefill", chunk, total, profile)
            if prof:
                stats.profiles.append(prof)
        stats.prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(max_new_tokens):
            tok = sampler(logits)
            stats.new_tokens += 1
            yield tok
            if tok in stop_ids or i == max_new_tokens - 1:
                break
            total += 1
            logits, prof = ex.step("decode", np.asarray([tok], np.int32), total, profile)
            stats.decode_s = time.perf_counter() - t0
            if prof:
                stats.profiles.append(prof)


def load(compiled_dir: str | Path, model_dir: str | Path | None = None, adapter: str | None = None,
         verbose: bool = False) -> Model:
    module = load_compiled(compiled_dir)
    mdir = Path(model_dir) if model_dir else Path(module.manifest["model_dir"])
    return Model(module, mdir, adapter, verbose)
