"""What ``python -m frontend.compile`` lets a user choose: the options every lowering pass and
kernel generator reads (storage formats, context capacity, prefill chunk, attention splits)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LowerOptions:
    weight_dtype: str = "float16"  # compiled storage dtype of weights (float16 | float32)
    max_context: int = 4096  # KV cache capacity (tokens)
    prefill_chunk: int = 256  # longest prompt piece one prefill step takes
    max_binding_bytes: int = 128 * 1024 * 1024  # weights above this are split (lavapipe's limit)
    kv_dtype: str = "float16"  # KV cache storage dtype (float16 | float32); kernels accumulate in f32
    # decode attention (flash-decoding): at most this many splits of the cache per kv head, each
    # at least `attention_split_unit` positions; 1 = one workgroup per kv head, no combine dispatch;
    # 0 = by the model's GQA group (`decode_splits`)
    attention_splits: int = 0
    attention_split_unit: int = 0
    # the splits' merge done by the attention kernel's last workgroup per kv head
    # (lowering.fuse_attention_combine); False keeps the attention_combine dispatch (the baseline)
    fuse_attention_combine: bool = True
    # prefill attention as one flash-attention kernel (lowering.fuse_prefill_attention); False keeps
    # the batched GEMM + softmax path (the baseline to time it against; the unfused kernels' tests)
    fuse_prefill_attention: bool = True
    # prefill gate + up GEMMs + silu_mul as one GEMM over both weights (lowering.fuse_prefill_swiglu);
    # False keeps the three kernels (the baseline to time it against; the unfused kernels' tests)
    fuse_prefill_swiglu: bool = True
    # prefill q, k, v GEMMs as one GEMM with a packed [q | k | v] output (lowering.fuse_prefill_qkv);
    # False keeps the three (the baseline to time it against; the unfused kernels' tests)
    fuse_prefill_qkv: bool = True
    # none | q8 | q4: 2-D weights (linears, embedding) in that common.weight_format, quantized at first load
    quantize: str = "none"
    keep_lm_head: bool = False  # with quantize: the lm_head (and a tied embedding) stays in weight_dtype
    # build every kernel's other schedules too, for runtime.tune to choose among on the user's GPU;
    # False: only the default schedules (a compile several times faster, nothing to tune)
    tuning_candidates: bool = True

    def __post_init__(self) -> None:
        if self.attention_splits < 0 or self.attention_split_unit < 0:
            raise ValueError(f"attention_splits and attention_split_unit must be >= 0 (0: by the GQA group), got "
                             f"{self.attention_splits} and {self.attention_split_unit}")

    def decode_splits(self, group: int) -> tuple[int, int]:
        """Decode attention's ``(split unit, max splits)`` for GQA groups of ``group`` query heads:
        the options' own where set, else 32 x 128 for groups of <= 2 and 64 x 64 above. Shorter
        splits shorten every workgroup's chain of memory round trips but lengthen the merge of the
        last one, which has threads to spare for it only at small groups (``MERGE_PARTS``). H200,
        decode tok/s at context 128 / 4096 (RESULTS.md, fifth session): 0.6B (group 2) 834 / 666
        with 32 x 128 against 754-775 / 600-607 with 64 x 64; 4B (group 4) 282 / 219 against 274 /
        239."""
        small = group <= 2
        return (self.attention_split_unit or (32 if small else 64), self.attention_splits or (128 if small else 64))
