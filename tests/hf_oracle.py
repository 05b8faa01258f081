"""HF transformers' Qwen3ForCausalLM on torch CPU: the independent numerical oracle."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache


class F16StorageCache(DynamicCache):
    """HF's cache, with every K/V row rounded to f16 as it is stored (and so as it is read back,
    the step's own row included): what a compiled module with ``kv_dtype=float16`` computes. HF
    caches K after its norm and RoPE, as our kernels do, so both round the same values."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        def rnd(t: torch.Tensor) -> torch.Tensor:
            return t.to(torch.float16).to(t.dtype)

        return super().update(rnd(key_states), rnd(value_states), layer_idx, *args, **kwargs)


class HFOracle:
    def __init__(self, model_dir, dtype=torch.float32, round_weights_to_f16: bool = False,
                 kv_dtype: str = "float32") -> None:
        """``kv_dtype="float16"``: HF's K/V cache holds f16-rounded rows (``F16StorageCache``), so
        a module compiled with an f16 cache is compared on the same rounded keys and values."""
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        if round_weights_to_f16:  # compare an f16-weight build against HF on the same rounded weights
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(p.to(torch.float16).to(dtype))
        self.kv_f16 = kv_dtype == "float16"
        self.past = None

    def _cache(self) -> DynamicCache | None:
        return F16StorageCache(config=self.model.config) if self.kv_f16 else None

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits for every prompt position, [seq, vocab]."""
        with torch.no_grad():
            r = self.model(torch.tensor([ids]), cache=self._cache(), use_cache=True)
        self.past = r.past_key_values
        return r.logits[0].float().numpy()

    def step(self, token: int) -> np.ndarray:
        with torch.no_grad():
            r = self.model(torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past = r.past_key_values
        return r.logits[0, -1].float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        # the model's own generation_config (its EOS ids stop generation), greedy
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0,
                                      top_k=None, top_p=None, temperature=None, cache=self._cache())
        return out[0, len(ids):].tolist()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def assert_steps_match_hf(model, hf: HFOracle, prompt: list[int], decode_steps: int, tol: float) -> None:
    """Prefill ``prompt`` (in chunks of the compiled prefill size) and decode ``decode_steps`` greedy
    tokens on the GPU; after every step the logits must be within ``tol`` of HF's."""
    ex = model.executor
    total = 0
    for s in range(0, len(prompt), ex.chunk):
        chunk = np.asarray(prompt[s:s + ex.chunk], np.int32)
        total += len(chunk)
        logits, _ = ex.step("prefill", chunk, total)
    ref = hf.prefill(prompt)[-1]
    assert rel_err(logits, ref) <= tol, f"prefill of {len(prompt)} tokens: rel err {rel_err(logits, ref):.2e}"
    tok = int(ref.argmax())
    for step in range(decode_steps):
        total += 1
        logits, _ = ex.step("decode", np.asarray([tok], np.int32), total)
        ref = hf.step(tok)
        assert rel_err(logits, ref) <= tol, f"decode step {step} after {len(prompt)}: {rel_err(logits, ref):.2e}"
        tok = int(ref.argmax())
