"""HF transformers' Qwen3ForCausalLM on torch CPU: the independent numerical oracle."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM


class HFOracle:
    def __init__(self, model_dir, dtype=torch.float32, round_weights_to_f16: bool = False) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        if round_weights_to_f16:  # compare an f16-weight build against HF on the same rounded weights
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(p.to(torch.float16).to(dtype))
        self.past = None

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits for every prompt position, [seq, vocab]."""
        with torch.no_grad():
            r = self.model(torch.tensor([ids]), use_cache=True)
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
                                      top_k=None, top_p=None, temperature=None)
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
