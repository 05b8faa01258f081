"""``python -m frontend.compile MODEL_DIR [-o OUT]``: trace, lower, build kernels, write a compiled module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli_help import HelpFormatter
from common.errors import UserError, cli_main
from lowering.options import LowerOptions  # a dataclass alone: no TVM import before the flags are checked

_DTYPES = {"f16": "float16", "f32": "float32"}


@cli_main
def main(argv: list[str] | None = None) -> int:
    from lowering.pipeline import PASS_NAMES

    ap = argparse.ArgumentParser(prog="python -m frontend.compile", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("model_dir", type=Path, help="a Hugging Face Qwen3 model directory")
    ap.add_argument("-o", "--out", type=Path, help="output directory (default: MODEL_DIR.vkmod)")
    ap.add_argument("--weight-dtype", default="f16", help="GPU weight storage, one of f16, f32 (f32 for adapters "
                    "without shader-f16; default: f16)")
    ap.add_argument("--quantize", default="none", help="store the 2-D weights (linears, embedding, lm_head) "
                    "group-wise quantized, one of none, q8, q4: 8- or 4-bit codes, groups of 32 along K with f16 "
                    "scales (quantized at the first load and cached in OUT; default: none)")
    ap.add_argument("--keep-lm-head", action="store_true", help="with --quantize: keep the lm_head (and the "
                    "embedding, when tied to it) in --weight-dtype")
    ap.add_argument("--no-tuning-candidates", action="store_true", help="build only each kernel's default "
                    "schedule, not the others runtime.tune chooses among (a compile several times faster; "
                    "nothing to tune)")
    ap.add_argument("--max-context", type=int, default=None, help="KV cache capacity in tokens (default 4096 "
                    "or the model's max_position_embeddings if smaller)")
    ap.add_argument("--kv-dtype", default="f16", help="KV cache storage, one of f16, f32 (f16 halves the cache "
                    "memory and attention's reads; default: f16)")
    ap.add_argument("--attention-splits", type=int, help="decode attention splits the cache into up to N pieces per "
                    "kv head, one workgroup each (flash-decoding; 1: one workgroup per kv head and no combine "
                    "dispatch; default: 128 for models with <= 2 query heads per kv head, else 64)")
    ap.add_argument("--attention-split-unit", type=int, help="decode attention's splits are whole multiples of this "
                    "many cache positions (smaller: more, shorter splits; default: 32 for models with <= 2 query "
                    "heads per kv head, else 64)")
    ap.add_argument("--separate-attention-combine", action="store_true", help="merge decode attention's splits "
                    "in a dispatch of its own instead of in the attention kernel's last workgroup per kv head (the "
                    "baseline to time it against)")
    ap.add_argument("--unfused-prefill-attention", action="store_true", help="keep prefill attention as batched "
                    "GEMMs + softmax over a [heads, seq, total] score tensor instead of one flash-attention kernel "
                    "(the baseline to time it against)")
    ap.add_argument("--prefill-chunk", type=int, default=256, help="longest prompt piece per prefill step "
                    "(default: 256)")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--no-cache", action="store_true", help="rebuild every kernel (ignore the kernel cache)")
    ap.add_argument("--dump-after", choices=PASS_NAMES, help="print the graph after this pass (default: none)")
    a = ap.parse_args(argv)
    if a.weight_dtype not in _DTYPES:
        raise UserError(f"--weight-dtype {a.weight_dtype!r} is not supported (expected f16 or f32)")
    if a.kv_dtype not in _DTYPES:
        raise UserError(f"--kv-dtype {a.kv_dtype!r} is not supported (expected f16 or f32)")
    if a.attention_splits is not None and a.attention_splits <= 0:
        raise UserError(f"--attention-splits must be >= 1, got {a.attention_splits}")
    if a.attention_split_unit is not None and a.attention_split_unit <= 0:
        raise UserError(f"--attention-split-unit must be >= 1, got {a.attention_split_unit}")
    if a.attention_split_unit is not None and a.attention_splits == 1:
        raise UserError("--attention-split-unit has no effect with --attention-splits 1 (one workgroup per kv head "
                        "walks the whole cache)")
    if a.quantize not in ("none", "q8", "q4"):
        raise UserError(f"--quantize {a.quantize!r} is not supported (expected none, q8 or q4)")
    if a.keep_lm_head and a.quantize == "none":
        raise UserError("--keep-lm-head only applies with --quantize q4 or q8")
    if a.max_context is not None and a.max_context <= 0:
        raise UserError(f"--max-context must be a positive number of tokens, got {a.max_context}")
    if a.prefill_chunk <= 0:
        raise UserError(f"--prefill-chunk must be positive, got {a.prefill_chunk}")

    from common.atomic import check_writable
    from frontend.config import default_notes, load_config
    from lowering.module import compile_model

    cfg = load_config(a.model_dir)
    for note in default_notes(cfg, a.model_dir / "config.json"):
        print(note, file=sys.stderr)
    max_ctx = a.max_context or min(4096, cfg.max_position_embeddings)
    out = a.out or a.model_dir.with_name(a.model_dir.name + ".vkmod")
    check_writable(out, a.force)  # before minutes of kernel building, not after
    opts = LowerOptions(weight_dtype=_DTYPES[a.weight_dtype], max_context=max_ctx,
                        prefill_chunk=min(a.prefill_chunk, max_ctx), kv_dtype=_DTYPES[a.kv_dtype],
                        attention_splits=a.attention_splits or 0,
                        attention_split_unit=a.attention_split_unit or 0, quantize=a.quantize,
                        keep_lm_head=a.keep_lm_head,
                        fuse_prefill_attention=not a.unfused_prefill_attention,
                        fuse_attention_combine=not a.separate_attention_combine,
                        tuning_candidates=not a.no_tuning_candidates)
    compile_model(a.model_dir, out, opts, force=a.force, dump_after=a.dump_after, use_cache=not a.no_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
