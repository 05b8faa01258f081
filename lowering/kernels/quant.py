"""Reading a weight of any ``common.weight_format`` inside a kernel: one place for the buffer
declarations, the kernel args and the dequantizing loads, so every generator (GEMV, GEMM, the
embedding gather, the TE fallback) reads a format the same way.

A float weight is one buffer param of ``float16x4`` / ``float32x4`` (vec4 loads). A quantized
weight is two params bound to the *same* GPU buffer (the kernel arg list names the tensor
twice): the codes as ``uint32`` words and the whole buffer again as ``float16``, whose scales
start at ``scale_offset`` (layout: ``common.weight_format``). One u32 word holds 8 (q4) or 4 (q8)
codes; a code becomes ``f32(code - Q)`` through masks, float bits and one exact subtraction (no
int -> float conversion), and the group's scale multiplies the dot product of a load's values with
the activation once (the scale is per 32 values along K; a load never straddles two groups). The
GEMV reads 16 bytes per load (``words=4``: a whole q4 group, half a q8 group) or one word (its
wide schedules); the GEMM's tile loads and the TE bodies one word.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx
from tvm.script import tirx as T

from common.weight_format import WeightFormat, of_dtype
from ir.graph import Node

_TWO23_BITS = 0x4B000000  # the float32 2**23: its mantissa's low bits take a code as an integer


@dataclass(frozen=True)
class WeightRead:
    """How kernels read a [rows, cols] weight stored as graph dtype ``dtype``; a quantized one
    ``words`` u32 words at a time (1, or 4 for the GEMV's 16-byte loads of up to 32 codes)."""

    dtype: str
    rows: int
    cols: int
    words: int = 1

    @property
    def fmt(self) -> WeightFormat:
        return of_dtype(self.dtype)

    @property
    def quantized(self) -> bool:
        return self.fmt.quantized

    @property
    def unit(self) -> str:
        """Element type of the data param: a vec4 of floats, or ``words`` u32 words of codes."""
        if not self.quantized:
            return f"{self.dtype}x4"
        return "uint32" if self.words == 1 else f"uint32x{self.words}"

    @property
    def unit_values(self) -> int:
        """Weight values per element of the data param (4 for floats; 4 or 8 codes per word)."""
        return self.fmt.per_word * self.words if self.quantized else 4

    @property
    def units(self) -> int:
        """Elements of the data param per row."""
        return self.cols // self.unit_values

    @property
    def scale_len(self) -> int:
        """f16 elements of the scale param: the whole buffer (the scales sit after the codes); a
        float format has no scale param (1: a placeholder shape, dropped from the kernel)."""
        if not self.quantized:
            return 1
        return self.fmt.scale_offset(self.rows, self.cols) + self.rows * (self.cols // self.fmt.group)

    def scale(self, S, row, k):
        """The f32 scale of ``row`` at column ``k`` (any column of the group)."""
        groups = self.cols // self.fmt.group
        return T.Cast("float32", S[self.fmt.scale_offset(self.rows, self.cols) + row * groups
                                   + k // self.fmt.group])

    def codes4(self, word, first: int | tirx.PrimExpr):
        """Codes ``first .. first + 3`` of a u32 ``word`` as float32x4 values ``code - Q``.

        No int -> float conversion (a slow instruction on GPUs: a quarter or less of the FMA
        rate, and a q4 word has 8 codes): a code ORed into the mantissa of 2**23 is the float
        ``2**23 + code`` exactly, and subtracting ``2**23 + Q`` leaves ``code - Q`` exactly."""
        shift = T.Broadcast(T.Cast("uint32", first * self.fmt.bits), 4) + T.Ramp(
            T.uint32(0), T.uint32(self.fmt.bits), 4)
        mask = T.Broadcast(T.uint32((1 << self.fmt.bits) - 1), 4)
        bits = ((T.Broadcast(word, 4) >> shift) & mask) | T.Broadcast(T.uint32(_TWO23_BITS), 4)
        return T.reinterpret("float32x4", bits) - T.Broadcast(T.float32(2.0 ** 23 + self.fmt.qmax), 4)

    def vec4(self, W, S, row, k4):
        """Dequantized values ``4 k4 .. 4 k4 + 3`` of ``row`` (float32x4): the GEMM's tile loads."""
        if not self.quantized:
            return T.Cast("float32x4", W[row, k4])
        per4 = self.fmt.per_word // 4  # vec4s per word
        return self.codes4(W[row, k4 // per4], (k4 % per4) * 4) * T.Broadcast(self.scale(S, row, 4 * k4), 4)

    def unit_scale(self, S, row, u):
        """The f32 scale of data element ``u`` of ``row`` (its values share one group)."""
        return self.scale(S, row, u * self.unit_values)

    def pair_index(self, row, u):
        """Index, in ``vec2<f16>`` pairs of the buffer, of the pair holding the scale of data
        element ``u`` of ``row``: for a 16-byte q4 element (a group) at an even ``u`` (the row's
        group count even), the scales of elements ``u`` and ``u + 1``."""
        groups = self.cols // self.fmt.group
        return (self.fmt.scale_offset(self.rows, self.cols) + row * groups + u * self.unit_values
                // self.fmt.group) // 2

    def unit_dot(self, a, word, base=0):
        """``sum`` over one data element ``word`` (loaded by the caller, so that a kernel can issue
        all its loads before the math) of the activation vec4s ``a[base ..]`` times the weight values;
        for a quantized format *before* the group's scale (the caller multiplies by
        ``unit_scale`` once per element: its values share one group)."""
        if not self.quantized:
            return T.call_pure_extern("float32", "dot", a[base], T.Cast("float32x4", word))
        if self.words == 1:  # one u32 word: its codes four at a time (``codes4``)
            total = None
            for j in range(self.fmt.per_word // 4):
                d = T.call_pure_extern("float32", "dot", a[base + j], self.codes4(word, 4 * j))
                total = d if total is None else total + d
            return total
        if self.words != 4:
            raise ValueError("quantized GEMV steps are one word or 16-byte loads (words=1 or 4)")
        return self._planes_dot(a, word, base)

    def _planes_dot(self, a, word, base):
        """``unit_dot`` of a 16-byte element (``uint32x4``), by code *position* across its 4 words.

        Why: fewer instructions per code than ``codes4``. Position ``p`` (nibble or byte) of all 4
        words is one vector op ``(word & mask_p) | bits(2**23)``, no shift: a code ``c`` left in
        place is ``c * 2**(bits p)``, which the mantissa of ``2**23`` holds exactly while it sits in
        the low 16 bits (the upper half is shifted down once, for all its positions). Subtracting
        ``2**23 + Q 2**(bits p)`` leaves ``(c - Q) 2**(bits p)`` exactly; the dot product with the
        4 activations of those codes (a register gather, no memory traffic) is scaled back by the
        exact power of two ``2**-(bits p)`` once per position. Per code: one AND-OR (a single LOP3
        on NVIDIA), one subtraction, one FMA; ``codes4`` also shifts every code."""
        bits, per = self.fmt.bits, self.fmt.per_word
        half = per // 2  # positions per 16-bit half of a word
        parts = [word, word >> T.Broadcast(T.uint32(16), 4)]
        total = None
        for p in range(half):
            mask = T.Broadcast(T.uint32(((1 << bits) - 1) << (bits * p)), 4)
            bias = T.Broadcast(T.float32(2.0 ** 23 + self.fmt.qmax * 2.0 ** (bits * p)), 4)
            d = None
            for h, src in enumerate(parts):
                vals = T.reinterpret("float32x4", (src & mask) | T.Broadcast(T.uint32(_TWO23_BITS), 4)) - bias
                # activation of code position h*half + p of word j: value per*j + h*half + p of the element
                idx = [per * j + h * half + p for j in range(4)]
                act = T.Shuffle([a[base + i // 4] for i in idx], [4 * n + i % 4 for n, i in enumerate(idx)])
                dot = T.call_pure_extern("float32", "dot", act, vals)
                d = dot if d is None else d + dot
            d = d * T.float32(2.0 ** -(bits * p)) if p else d
            total = d if total is None else total + d
        return total

    def value(self, W, S, row, k):
        """One dequantized value (TE bodies: the embedding gather, the dlight fallback)."""
        if not self.quantized:
            return W[row, k].astype("float32")
        per, bits = self.fmt.per_word, self.fmt.bits
        code = (W[row, k // per] >> ((k % per) * bits).astype("uint32")) & tirx.const((1 << bits) - 1, "uint32")
        return (code.astype("float32") - tirx.const(float(self.fmt.qmax), "float32")) * self.scale(S, row, k)


def weight_read(w: Node) -> WeightRead:
    rows, cols = w.shape
    return WeightRead(w.dtype, rows, cols)


def weight_args(w: Node) -> list[str]:
    """Kernel args of a weight: its name, twice when quantized (codes and scales views)."""
    return [w.name, w.name] if of_dtype(w.dtype).quantized else [w.name]


def weight_placeholders(rw: WeightRead, name: str = "W") -> list[te.Tensor]:
    """TE placeholders of a weight: its data, and for a quantized one the scale view (``WS``)."""
    data = te.placeholder((rw.rows, rw.units if rw.quantized else rw.cols), "uint32" if rw.quantized else rw.dtype,
                          name=name)
    return [data, te.placeholder((rw.scale_len,), "float16", name=f"{name}S")] if rw.quantized else [data]
