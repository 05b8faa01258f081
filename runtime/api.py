"""Python API: ``model = runtime.load(compiled_dir)``; ``for tok in model.generate(ids): ...``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError
from frontend.checkpoint import WeightStore
from runtime.compiled import CompiledModule, load_compiled
from runtime.device import open_device
from runtime.executor import Executor, StepProfile
from runtime.sampling import Sampler, SamplingParams
from runtime.stops import IncrementalDecoder, StopStrings
from runtime.text import generation_defaults, load_tokenizer, stop_ids

DEFAULT_MAX_NEW_TOKENS = 32  # when neither the caller nor generation_config.json says


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V were reused from the previous generation
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""  # "stop" (EOS or a stop string), "length", "cancelled"
    stop: int | str | None = None  # the stop token id or stop string that ended it
    stop_index: int | None = None  # where the stop string starts in the generated text
    text: str = ""  # the generated text, when stop strings were given (kept whole, as HF does)
    profiles: list[StepProfile] = field(default_factory=list)

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from the prefill logits
        return steps / self.decode_s if self.decode_s else 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Model:
    def __init__(self, module: CompiledModule, model_dir: Path, adapter: str | None, verbose: bool) -> None:
        self.module = module
        self.model_dir = model_dir
        mf = module.manifest
        weights = WeightStore(model_dir, {w.param: w.shape for w in mf.weights})
        if weights.fingerprint() != mf.weights_fingerprint:
            raise UserError(f"{model_dir}: weights changed since {module.path} was compiled (fingerprint "
                            "mismatch); recompile with python -m frontend.compile")
        self.device = open_device(adapter, mf.requires)
        self.executor = Executor(module, self.device, weights, verbose)
        self.config = mf.model  # what the runtime knows of the model: family, vocab_size, layers
        self.max_context = mf.options.max_context
        self.last_stats = GenerationStats()
        self._tokenizer = None
        self.generation_config = generation_defaults(model_dir)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def default_sampling(self, **overrides) -> SamplingParams:
        """``generation_config.json``'s settings (what ``generate`` uses when given none)."""
        return SamplingParams.from_generation_config(self.generation_config, **overrides)

    def default_stop_ids(self) -> set[int]:
        """End-of-sequence ids: generation_config's ``eos_token_id`` plus Qwen's end tokens."""
        return stop_ids(self.model_dir, self.tokenizer if (self.model_dir / "tokenizer.json").is_file() else None)

    def check_request(self, prompt_len: int, max_new_tokens: int) -> None:
        """Raise UserError unless a prompt of this length and this many new tokens fit."""
        if prompt_len < 1:
            raise UserError("the prompt is empty (it must have at least one token)")
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        if prompt_len + max_new_tokens > self.max_context:
            raise UserError(f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) = "
                            f"{prompt_len + max_new_tokens} exceeds the compiled context of {self.max_context} "
                            "tokens (recompile with a larger --max-context)")

    def generate(self, prompt_ids: list[int], max_new_tokens: int | None = None,
                 sampling: SamplingParams | None = None, stop_ids: set[int] | frozenset[int] | None = None,
                 profile: bool = False, *, stop_strings: Sequence[str] = (), reuse_cache: bool = False,
                 should_stop: Callable[[], bool] | None = None,
                 on_prefill: Callable[[int, int], None] | None = None) -> Iterator[int]:
        """Yield new token ids, like ``python -m runtime.generate`` does.

        Defaults (None) come from the model, as in the CLI: ``max_new_tokens`` from
        generation_config.json (else 32), ``sampling`` from generation_config.json (sampled if it
        says ``do_sample``), ``stop_ids`` = the end-of-sequence ids. Greedy: ``SamplingParams()``;
        never stop early: ``stop_ids=set()``. The stop token is yielded (it ends the output).

        ``stop_strings``: stop at the first token whose text completes one (HF's rule); the text
        and where the string starts are in ``last_stats``. ``reuse_cache``: keep the K/V of the
        longest prefix this prompt shares with what the cache holds (multi-turn chat; only the
        rest is prefilled). ``should_stop``: polled before every step; True ends the generation
        with finish_reason "cancelled". ``on_prefill(done, total)``: progress of the prompt.
        ``last_stats`` describes the generation when the iterator ends (finish_reason etc.).
        """
        if max_new_tokens is None:
            max_new_tokens = int(self.generation_config.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        self.check_request(len(prompt_ids), max_new_tokens)
        vocab = self.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise UserError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        sampler = Sampler(sampling if sampling is not None else self.default_sampling(), prompt_ids)
        stops = self.default_stop_ids() if stop_ids is None else set(stop_ids)
        matcher = StopStrings(stop_strings) if stop_strings else None
        detok = IncrementalDecoder(self.tokenizer, stops) if matcher else None
        ex = self.executor
        past = min(common_prefix(ex.cached_tokens, prompt_ids), len(prompt_ids) - 1) if reuse_cache else 0
        stats = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids), cached_tokens=past,
                                                  finish_reason="length")
        cancelled = should_stop or (lambda: False)
        t0 = time.perf_counter()
        total = past
        logits = None
        for start in range(past, len(prompt_ids), ex.chunk):
            if cancelled():
                stats.finish_reason = "cancelled"
                return
            chunk = np.asarray(prompt_ids[start:start + ex.chunk], np.int32)
            total += len(chunk)
            logits, prof = ex.step("prefill", chunk, total, profile)
            if prof:
                stats.profiles.append(prof)
            if on_prefill:
                on_prefill(total - past, len(prompt_ids) - past)
        stats.prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = self._new_tokens(sampler, logits, total, max_new_tokens, profile, stats)
        try:
            for i, tok in enumerate(tokens):
                if i:
                    stats.decode_s = time.perf_counter() - t0
                stats.new_tokens += 1
                if tok in stops:
                    stats.finish_reason, stats.stop = "stop", tok
                elif matcher and detok:
                    new_from = len(detok.text)
                    detok.push(tok)
                    stats.text = detok.text
                    hit = matcher.find(detok.text, new_from)
                    if hit:
                        stats.finish_reason, stats.stop_index, stats.stop = "stop", hit[0], hit[1]
                try:
                    yield tok
                except GeneratorExit:  # the caller stopped reading (Ctrl-C, a client went away)
                    if stats.finish_reason != "stop" and i < max_new_tokens - 1:
                        stats.finish_reason = "cancelled"
                    raise
                if stats.finish_reason == "stop" or i == max_new_tokens - 1:
                    break
                if cancelled():
                    stats.finish_reason = "cancelled"
                    break
        finally:
            tokens.close()
        if detok:
            detok.flush()
            stats.text = detok.text

    def _new_tokens(self, sampler: Sampler, logits: np.ndarray, total: int, max_new_tokens: int, profile: bool,
                    stats: GenerationStats) -> Iterator[int]:
        """The generated tokens, the first from the prefill's logits. A plain argmax runs on the GPU,
        each step queued before the previous token is read (``Executor.greedy_decode``); any other
        choice (sampling, penalties) or a profiled run reads the logits back and samples here."""
        ex = self.executor
        tok = sampler(logits)
        yield tok
        if sampler.p.plain_argmax and not profile:
            yield from ex.greedy_decode(tok, total + 1, max_new_tokens - 1)
            return
        for _ in range(max_new_tokens - 1):
            total += 1
            logits, prof = ex.step("decode", np.asarray([tok], np.int32), total, profile)
            if prof:
                stats.profiles.append(prof)
            tok = sampler(logits)
            yield tok


def load(compiled_dir: str | Path, model_dir: str | Path | None = None, adapter: str | None = None,
         verbose: bool = False) -> Model:
    module = load_compiled(compiled_dir)
    mdir = Path(model_dir) if model_dir else Path(module.manifest.model_dir)
    return Model(module, mdir, adapter, verbose)
