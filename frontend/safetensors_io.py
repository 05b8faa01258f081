"""Minimal safetensors reader/writer on numpy memmaps.

Why not ``safetensors.numpy``: numpy has no bfloat16, and we want lazy, zero-copy access plus
precise error messages for truncated or corrupt files. The format is simple: an 8-byte
little-endian header length, a JSON header, then raw tensor bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError

# safetensors dtype -> (numpy storage dtype, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"),
}
_ALL_KNOWN = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "F8_E4M3", "F8_E5M2",
              *DTYPES}
_MAX_HEADER = 100 * 1024 * 1024


class TensorInfo:
    __slots__ = ("name", "dtype", "shape", "start", "end", "path")

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], start: int, end: int, path: Path):
        self.name, self.dtype, self.shape, self.start, self.end, self.path = name, dtype, shape, start, end, path


def read_header(path: Path) -> tuple[dict[str, TensorInfo], int, bytes]:
    """Parse and validate a file's header. Returns tensors, data start offset, raw header bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise UserError(f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})")
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt safetensors header ({e})") from None
    data_start = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (s, e) = ent["dtype"], tuple(int(d) for d in ent["shape"]), ent["data_offsets"]
            s, e = int(s), int(e)
        except (TypeError, KeyError, ValueError, OverflowError):
            raise UserError(f"{path}: corrupt safetensors header entry for tensor '{name}'") from None
        if dtype not in _ALL_KNOWN:
            raise UserError(f"{path}: tensor '{name}' has unknown dtype {dtype!r}")
        if dtype in DTYPES:
            want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
            if e - s != want or s < 0 or min(shape, default=1) < 0:
                raise UserError(f"{path}: tensor '{name}' {dtype}{list(shape)} needs {want} bytes, "
                                f"header gives offsets [{s}, {e}]")
        if e > size - data_start or s > e:
            raise UserError(f"{path}: truncated: tensor '{name}' ends at byte {data_start + e}, file has {size}")
        out[name] = TensorInfo(name, dtype, shape, s, e, path)
    return out, data_start, raw


def load(info: TensorInfo, data_start: int) -> np.ndarray:
    """Memory-map one tensor and return it as float32 (bf16/f16 converted)."""
    raw = np.memmap(info.path, dtype=np.uint8, mode="r", offset=data_start + info.start,
                    shape=(info.end - info.start,)) if info.end > info.start else np.zeros(0, np.uint8)
    arr = raw.view(DTYPES[info.dtype]).reshape(info.shape)
    if info.dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None) -> None:
    """Write ``name -> (dtype, storage array)``; storage for BF16 is uint16 bits."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, (dtype, arr) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
