"""Reading a weight of any ``common.weight_format`` inside a kernel: one place for the buffer
declarations, the kernel args and the dequantizing loads, so every generator (GEMV, GEMM, the
embedding gather, the TE fallback) reads a format the same way.

A float weight is one buffer param of ``float16x4`` / ``float32x4`` (vec4 loads). A quantized
weight is two params bound to the *same* GPU buffer (the kernel arg list names the tensor
twice): the codes as ``uint32`` words and the whole buffer again as ``float16``, whose scales
start at ``scale_offset`` (layout: ``common.weight_format``). One u32 word holds 8 (q4) or 4 (q8)
codes; a code becomes ``f32(code - Q)`` through masks, float bits and one exact FMA or subtraction
(no int -> float conversion), and the group's scale multiplies the dot product of a load's values
with the activation once (the scale is per 32 values along K; a load never straddles two groups).
The GEMV reads 16 bytes per load (``words=4``: a whole q4 group, half a q8 group; its activations
gathered in registers or read as planes from shared memory, ``plane_dot``) or one word; the
GEMM's tile loads and the TE bodies one word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
        if self.words == 1:  # one u32 word: its codes by position, four at a time (``_word_dot``)
            return self._word_dot(a, word, base)
        if self.words != 4:
            raise ValueError("quantized GEMV steps are one word or 16-byte loads (words=1 or 4)")
        return self._planes_dot(a, word, base)

    def _position(self, src, p: int, lanes: int = 4):
        """``(code - Q)`` of the codes at position ``p`` (bits ``bits p`` upwards) of the ``lanes``
        words of ``src`` (a vector of u32, the high half already shifted down), as float32, in
        two instructions per code: one AND-OR puts the code, left in place, into the mantissa of
        ``2**23`` (the float ``2**23 + code 2**(bits p)``, exact while it sits in the low 16 bits),
        and one FMA scales by ``2**-(bits p)`` and subtracts ``2**(23 - bits p) + Q``: the exact
        product and the exact difference are small integers, so fused or not, no rounding. No
        shift per code, no int -> float conversion, no per-position scaling afterwards."""
        mask = T.Broadcast(T.uint32(((1 << self.fmt.bits) - 1) << (self.fmt.bits * p)), lanes)
        bits = T.reinterpret(f"float32x{lanes}", (src & mask) | T.Broadcast(T.uint32(_TWO23_BITS), lanes))
        scale = T.Broadcast(_f32(2.0 ** -(self.fmt.bits * p)), lanes)
        bias = T.Broadcast(_f32(-(2.0 ** (23 - self.fmt.bits * p) + self.fmt.qmax)), lanes)
        return T.call_pure_extern(f"float32x{lanes}", "fma", bits, scale, bias)

    def _word_dot(self, a, word, base):
        """``unit_dot`` of one u32 word: its values in order, four per activation vec4 ``a[base + m]``.
        Value ``i`` of the word sits at position ``i % half`` of half ``i // half`` (a q4 word's
        codes 0-3 in its low 16 bits, 4-7 in its high; a q8 word's bytes 0-1 and 2-3); each lane of
        a vec4 takes its own position: ``_position`` with per-lane masks and constants."""
        bits, per = self.fmt.bits, self.fmt.per_word
        half = per // 2
        total = None
        for m in range(per // 4):
            hs, ps = [(4 * m + c) // half for c in range(4)], [(4 * m + c) % half for c in range(4)]
            if len(set(hs)) == 1:
                src = T.Broadcast(word >> T.uint32(16) if hs[0] else word, 4)
            else:
                src = T.Broadcast(word, 4) >> _vec([T.uint32(16 * h) for h in hs])
            mask = _vec([T.uint32(((1 << bits) - 1) << (bits * p)) for p in ps])
            vbits = T.reinterpret("float32x4", (src & mask) | T.Broadcast(T.uint32(_TWO23_BITS), 4))
            vals = T.call_pure_extern("float32x4", "fma", vbits, _vec([_f32(2.0 ** -(bits * p)) for p in ps]),
                                      _vec([_f32(-(2.0 ** (23 - bits * p) + self.fmt.qmax)) for p in ps]))
            d = T.call_pure_extern("float32", "dot", a[base + m], vals)
            total = d if total is None else total + d
        return total

    def _planes_dot(self, a, word, base):
        """``unit_dot`` of a 16-byte element (``uint32x4``), by code *position* across its 4 words.

        Why: fewer instructions per code than shifting each code down. Position ``p`` (nibble or
        byte) of all 4 words is one vector ``_position`` (an AND-OR and an FMA per code; the
        upper half of the words is shifted down once, for all its positions); its dot product is
        with the 4 activations of those codes (a register gather, no memory traffic)."""
        per = self.fmt.per_word
        half = per // 2  # positions per 16-bit half of a word
        parts = [word, word >> T.Broadcast(T.uint32(16), 4)]
        total = None
        for p in range(half):
            for h, src in enumerate(parts):
                vals = self._position(src, p)
                # activation of code position h*half + p of word j: value per*j + h*half + p of the element
                idx = [per * j + h * half + p for j in range(4)]
                act = T.Shuffle([a[base + i // 4] for i in idx], [4 * n + i % 4 for n, i in enumerate(idx)])
                dot = T.call_pure_extern("float32", "dot", act, vals)
                total = dot if total is None else total + dot
        return total

    def plane_dot(self, planes, word):
        """``unit_dot`` of a 16-byte element whose activations come as *planes*: ``planes[q]`` is
        the vec4 of the 4 activations of code position ``q`` (``h half + p``) of its 4 words, the
        order ``stage_planes`` writes them in shared memory (no register gather)."""
        half = self.fmt.per_word // 2
        parts = [word, word >> T.Broadcast(T.uint32(16), 4)]
        total = None
        for h, src in enumerate(parts):
            for p in range(half):
                dot = T.call_pure_extern("float32", "dot", planes[h * half + p], self._position(src, p))
                total = dot if total is None else total + dot
        return total

    def value(self, W, S, row, k):
        """One dequantized value (TE bodies: the embedding gather, the dlight fallback)."""
        if not self.quantized:
            return W[row, k].astype("float32")
        per, bits = self.fmt.per_word, self.fmt.bits
        code = (W[row, k // per] >> ((k % per) * bits).astype("uint32")) & tirx.const((1 << bits) - 1, "uint32")
        return (code.astype("float32") - tirx.const(float(self.fmt.qmax), "float32")) * self.scale(S, row, k)


def _f32(x: float) -> tirx.PrimExpr:
    """A float32 constant that reaches the shader exactly: TVM prints float literals with 7
    significant digits (``2**-12`` would become ``2.441406e-04``), so any other value is written
    as the bit cast of its bits."""
    if float(f"{x:.6e}") == x:
        return T.float32(x)
    return T.reinterpret("float32", T.uint32(int(np.float32(x).view(np.uint32))))


def _vec(lanes: list) -> tirx.PrimExpr:
    """A vector of per-lane scalars (constants here)."""
    return T.Shuffle(lanes, list(range(len(lanes))))


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
