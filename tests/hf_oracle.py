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
