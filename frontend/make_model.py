"""``python -m frontend.make_model OUT --preset NAME``: a random-weight Qwen3 in the exact HF layout.

No model can be downloaded here, so tests, benchmarks and the README's demo use these. HF
transformers loads every directory this writes (tested).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.atomic import atomic_dir
from common.cli_help import HelpFormatter
from common.errors import UserError, cli_main
from common.progress import Progress
from frontend import safetensors_io as st
from frontend import tokenizer_builder
from frontend.config import Qwen3Config, parse_config
from frontend.presets import PRESETS
from frontend.weights import expected_params

_ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
_TORCH_DTYPE = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def make_config(preset: str, dtype: str) -> dict:
    p = dict(PRESETS[preset])
    specials = tokenizer_builder.special_ids(p["vocab_size"])
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **p,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
        "use_cache": True, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": p["num_hidden_layers"], "rope_scaling": None, "torch_dtype": _TORCH_DTYPE[dtype],
        "bos_token_id": specials["<|endoftext|>"], "eos_token_id": specials["<|im_end|>"],
        "transformers_version": "4.51.0",
    }


def random_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Weights scaled so activations stay O(1) and logits are peaked (greedy tokens are stable)."""
    if len(shape) == 1:  # norm weights: around 1, not exactly 1, so a wrong weight shows
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    std = 1.0 if "embed_tokens" in name else 1.0 / np.sqrt(shape[1])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def storage(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return st.to_bf16_bits(x)
    return x.astype(np.float16 if dtype == "f16" else np.float32)


def write_weights(out: Path, cfg: Qwen3Config, dtype: str, seed: int, shards: int) -> None:
    params = expected_params(cfg)
    rng = np.random.default_rng(seed)
    names = list(params)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    progress = Progress("writing weights", len(names))
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for name in group:
            arr = storage(random_tensor(rng, name, params[name]), dtype)
            tensors[name] = (_ST_DTYPE[dtype], arr)
            weight_map[name] = fname
            total += arr.nbytes
            progress.step()
        st.write(out / fname, tensors)
    progress.done()
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tokenizer(out: Path, vocab_size: int, max_len: int) -> dict[str, int]:
    tok = tokenizer_builder.build(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    ids = tokenizer_builder.special_ids(vocab_size)
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for s, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": max_len, "clean_up_tokenization_spaces": False,
        "chat_template": tokenizer_builder.CHAT_TEMPLATE,
    }, indent=2))
    return ids


def make_model(out: Path, preset: str, dtype: str = "bf16", seed: int = 0, shards: int = 1,
               force: bool = False) -> Path:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if dtype not in _ST_DTYPE:
        raise UserError(f"unknown dtype {dtype!r} (choose from bf16, f16, f32)")
    if shards < 1:
        raise UserError(f"--shards must be >= 1, got {shards}")
    raw = make_config(preset, dtype)
    cfg = parse_config(raw, Path("config.json"))
    with atomic_dir(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))
        ids = write_tokenizer(tmp, cfg.vocab_size, cfg.max_position_embeddings)
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"], "do_sample": True, "temperature": 0.6, "top_k": 20,
            "top_p": 0.95, "transformers_version": "4.51.0",
        }, indent=2))
        write_weights(tmp, cfg, dtype, seed, shards)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frontend.make_model", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("out", type=Path, help="directory to write (config.json, safetensors, tokenizer)")
    ap.add_argument("--preset", default="qwen3-0.6b", choices=list(PRESETS), help="model shape")
    ap.add_argument("--dtype", default="bf16", choices=list(_ST_DTYPE), help="dtype of the stored weights")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    ap.add_argument("--shards", type=int, default=1, help="number of safetensors files (> 1 writes an index)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    a = ap.parse_args(argv)
    make_model(a.out, a.preset, a.dtype, a.seed, a.shards, a.force)
    print(f"wrote {a.preset} ({a.dtype}, seed {a.seed}) to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
