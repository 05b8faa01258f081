"""Weight formats: how a weight tensor is laid out in its GPU buffer.

One descriptor per format is the single source of truth for a weight's byte size (memory plan,
binding limits, weight splitting, cost model), for the bytes the runtime uploads (``encode``),
for the kernel that reads it (lowering picks the dequantizing variant by the node's dtype, which
is the format's ``dtype``) and for what the numpy reference computes with (``decode``).

Formats (``name`` in the manifest and on the command line; ``dtype`` on graph weight nodes):

- ``f32`` / ``f16`` (dtype ``float32`` / ``float16``): the weight [N, K] row-major, converted
  from the checkpoint at upload.
- ``q8`` / ``q4`` (dtype ``q8`` / ``q4``): symmetric group-wise quantization, MLC
  ``q4f16_1``-like. A 2-D weight ``W`` [N, K] (HF ``[out, in]``; K, the reduced dim, must be a
  multiple of the group size G = 32) becomes, per row ``n`` and group ``g`` (columns
  ``32 g .. 32 g + 31``), with ``Q = 2**(bits - 1) - 1`` (7 for q4, 127 for q8)::

      s[n, g] = f16(max(max_k |W[n, k]| / Q, 2**-14))          (a positive normal f16)
      q[n, k] = clip(rint(W[n, k] / f32(s[n, g])), -Q, Q) + Q    (unsigned: 0 .. 2Q)
      W'[n, k] = f32(q[n, k] - Q) * f32(s[n, g])                 (dequantized; exact in f32)

  ``rint`` rounds half to even; the division is in float32. The scale floor ``2**-14`` (the
  smallest normal f16) keeps all-zero groups finite (their q is Q, i.e. 0) and keeps subnormal
  f16 values, which some GPUs flush, out of the buffer.

  Buffer layout (little-endian), in this order, no gaps:

  1. the packed codes, ``N * K * bits / 32`` u32 words, row-major [N, K * bits / 32]: word
     ``k // (32 / bits)`` of row ``n`` holds ``q[n, k]`` in bits ``bits * (k % (32 / bits))``
     upwards (q4: 8 codes per word, code 0 in the low nibble; q8: 4 codes per word, byte order);
  2. the scales, ``N * K / 32`` f16 values row-major [N, K / 32], starting at f16 index
     ``scale_offset = 2 * words``; zero-padded to a multiple of 4 bytes.

  Bytes per weight: q4 0.5625 per value (3.6x less than f16), q8 1.0625 (1.9x less). A kernel
  binds the buffer twice (the codes as ``array<u32>``, the scales as ``array<f16>``), so one
  weight stays one buffer; a weight split into row chunks (``lowering.passes.split_large_weights``)
  is one such buffer per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LAYOUT_VERSION = 1  # of the packing below: bump when it changes (cached packed weights are then rebuilt)
GROUP = 32  # quantization group along K
SCALE_FLOOR = 2.0 ** -14  # smallest normal f16
_ROWS_PER_BLOCK = 4096  # encode/decode in row blocks: bounded temporaries for 150k-row embeddings


@dataclass(frozen=True)
class WeightFormat:
    name: str  # f32 | f16 | q8 | q4
    dtype: str  # the graph dtype of a weight node stored in this format
    bits: int
    group: int = 0  # quantization group along K; 0: not quantized

    @property
    def quantized(self) -> bool:
        return self.group > 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def per_word(self) -> int:
        """Codes per u32 word (quantized formats)."""
        return 32 // self.bits

    def check(self, shape: Sequence[int], what: str) -> None:
        """Raise ValueError (naming ``what``) unless a weight of ``shape`` can be stored so."""
        if self.quantized and (len(shape) != 2 or shape[1] % self.group):
            raise ValueError(f"{what}: shape {list(shape)} cannot be stored as {self.name}: its last (reduced) dim "
                             f"must be a multiple of the group size {self.group}")

    def words(self, rows: int, cols: int) -> int:
        """u32 words of packed codes of a [rows, cols] weight."""
        return rows * cols * self.bits // 32

    def scale_offset(self, rows: int, cols: int) -> int:
        """Index, in f16 elements of the buffer, of the first scale of a [rows, cols] weight."""
        return 2 * self.words(rows, cols)

    def nbytes(self, shape: Sequence[int]) -> int:
        """Bytes of the buffer of a weight of ``shape`` (before the runtime's 16-byte alignment)."""
        numel = int(np.prod(shape, dtype=np.int64))
        if not self.quantized:
            return numel * self.bits // 8
        rows, cols = shape
        scales = 2 * rows * (cols // self.group)
        return 4 * self.words(rows, cols) + (scales + 3) // 4 * 4

    def row_bytes(self, cols: int) -> float:
        """Bytes one row of ``cols`` values takes (codes plus scales): weight splitting's unit."""
        return cols * self.bits / 8 + (2 * cols / self.group if self.quantized else 0)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("f32", "float32", 32), WeightFormat("f16", "float16", 16),
    WeightFormat("q8", "q8", 8, GROUP), WeightFormat("q4", "q4", 4, GROUP))}
_BY_DTYPE = {f.dtype: f for f in FORMATS.values()}
QUANTIZED_DTYPES = frozenset(f.dtype for f in FORMATS.values() if f.quantized)


def of_dtype(dtype: str) -> WeightFormat:
    """The format a weight node of this graph dtype is stored in."""
    return _BY_DTYPE[dtype]


def quantize(w: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [N, K] -> unsigned codes ``q`` [N, K] (uint8, 0 .. 2Q) and scales [N, K / 32] (f16)."""
    fmt.check(w.shape, "weight")
    n, k = w.shape
    g = np.asarray(w, np.float32).reshape(n, k // fmt.group, fmt.group)
    amax = np.abs(g).max(axis=-1)
    if not np.isfinite(amax).all():
        raise ValueError("weight has non-finite values")
    scales = np.maximum(amax / np.float32(fmt.qmax), np.float32(SCALE_FLOOR)).astype(np.float16)
    if np.isinf(scales).any():
        raise ValueError(f"weight has |values| up to {amax.max():.3g}, beyond what f16 scales hold")
    q = np.rint(g / scales.astype(np.float32)[..., None])
    q = (np.clip(q, -fmt.qmax, fmt.qmax) + fmt.qmax).astype(np.uint8)
    return q.reshape(n, k), scales


def dequantize(q: np.ndarray, scales: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """Codes and scales -> float32 [N, K], exactly as the kernels compute each value."""
    n, k = q.shape
    vals = q.astype(np.float32).reshape(n, k // fmt.group, fmt.group) - np.float32(fmt.qmax)
    return (vals * scales.astype(np.float32)[..., None]).reshape(n, k)


def pack(q: np.ndarray, scales: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """Codes and scales -> the buffer bytes (uint8, ``fmt.nbytes`` long), layout as documented."""
    n, k = q.shape
    codes = q if fmt.bits == 8 else (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    out = np.zeros(fmt.nbytes((n, k)), np.uint8)
    body = 4 * fmt.words(n, k)
    out[:body] = codes.reshape(-1)
    out[body:body + scales.size * 2] = np.ascontiguousarray(scales, "<f2").view(np.uint8).reshape(-1)
    return out


def unpack(buf: np.ndarray, shape: Sequence[int], fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    """The buffer bytes -> codes [N, K] (uint8) and scales [N, K / 32] (f16)."""
    n, k = shape
    buf = np.asarray(buf, np.uint8)
    body = 4 * fmt.words(n, k)
    codes = buf[:body].reshape(n, -1)
    if fmt.bits == 4:
        q = np.empty((n, k), np.uint8)
        q[:, 0::2], q[:, 1::2] = codes & 15, codes >> 4
    else:
        q = codes.copy()
    scales = buf[body:body + 2 * n * (k // fmt.group)].view("<f2").reshape(n, k // fmt.group)
    return q, scales.astype(np.float16)


def encode(w: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """A float weight -> the bytes its GPU buffer holds (uint8). Quantized formats work in row
    blocks: the codes and the scales of a block go to their two regions of the buffer."""
    if not fmt.quantized:
        return np.ascontiguousarray(w, np.float16 if fmt.bits == 16 else np.float32).reshape(-1).view(np.uint8)
    fmt.check(w.shape, "weight")
    n, k = w.shape
    out = np.zeros(fmt.nbytes((n, k)), np.uint8)
    body, row_words, groups = 4 * fmt.words(n, k), fmt.words(1, k), k // fmt.group
    for r0 in range(0, n, _ROWS_PER_BLOCK):
        r1 = min(r0 + _ROWS_PER_BLOCK, n)
        part = pack(*quantize(w[r0:r1], fmt), fmt)
        split = 4 * row_words * (r1 - r0)
        out[4 * row_words * r0: 4 * row_words * r1] = part[:split]
        out[body + 2 * groups * r0: body + 2 * groups * r1] = part[split: split + 2 * groups * (r1 - r0)]
    return out


def decode(buf: np.ndarray, shape: Sequence[int], fmt: WeightFormat) -> np.ndarray:
    """The buffer bytes -> float32 values, as the kernels see them."""
    if not fmt.quantized:
        return np.asarray(buf, np.uint8)[: fmt.nbytes(shape)].view(
            np.float16 if fmt.bits == 16 else np.float32).astype(np.float32).reshape(tuple(shape))
    return dequantize(*unpack(buf, shape, fmt), fmt)


def as_stored(w: np.ndarray, dtype: str) -> np.ndarray:
    """``w`` (float32) as the GPU holds a weight of graph dtype ``dtype``: quantized formats
    round-trip through their codes; float formats are returned as is (the reference computes in
    float32)."""
    fmt = of_dtype(dtype)
    if not fmt.quantized:
        return w
    return dequantize(*quantize(w, fmt), fmt)
