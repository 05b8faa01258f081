"""The numpy reference executor against HF transformers (float32): prefill + 8 decode steps."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.checkpoint import WeightStore
from frontend.config import load_config
from frontend.qwen3 import trace
from frontend.weights import expected_params
from ir import reference
from tests.hf_oracle import HFOracle, rel_err

CTX = 48


@pytest.mark.parametrize("preset,dtype,shards", [("tiny", "f32", 1), ("tiny-mha", "bf16", 2), ("tiny-gqa4", "f16", 1)])
def test_reference_matches_hf(model_dir, preset, dtype, shards):
    d = model_dir(preset, dtype, shards=shards)
    cfg = load_config(d)
    ws = WeightStore(d, expected_params(cfg))
    prefill, decode = trace(cfg, "prefill", all_logits=True), trace(cfg, "decode")
    hf = HFOracle(d)
    prompt = [5, 1, 77, 200, 13, 9, 140]
    caches = {f"cache_{kv}.{i}": np.zeros((cfg.num_key_value_heads, CTX, cfg.head_dim), np.float32)
              for i in range(cfg.num_hidden_layers) for kv in "kv"}
    out = reference.run(prefill, {"input_ids": np.array(prompt, np.int32), **caches}, ws.get,
                        {"seq": len(prompt), "total": len(prompt), "ctx": CTX})
    ref = hf.prefill(prompt)
    assert out["logits"].shape == ref.shape
    assert rel_err(out["logits"], ref) <= 1e-4
    ours, theirs = [int(out["logits"][-1].argmax())], [int(ref[-1].argmax())]
    total = len(prompt)
    for _ in range(8):
        caches = {k: out[k] for k in caches}
        total += 1
        out = reference.run(decode, {"input_ids": np.array([ours[-1]], np.int32), **caches}, ws.get,
                            {"seq": 1, "total": total, "ctx": CTX})
        ref = hf.step(ours[-1])
        assert rel_err(out["logits"][0], ref) <= 1e-4
        ours.append(int(out["logits"][0].argmax()))
        theirs.append(int(ref.argmax()))
    assert ours == theirs
