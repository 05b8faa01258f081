"""Quantized weights, packed once and cached next to the compiled module.

The model's safetensors stay the source of truth (the compiled module's fingerprint guards them);
quantizing a 4B model takes tens of seconds, so the first load writes the packed bytes of every
quantized ``WeightSpec`` to ``OUT/weights.<q4|q8>.bin`` and later loads map that file.

File layout::

    8 bytes   magic b"QVKWCACH"
    8 bytes   header length H (u64, little-endian)
    H bytes   JSON: {"version", "layout", "weights_fingerprint",
                     "entries": [{"key", "format", "shape", "offset", "nbytes", "crc32"}]}
    ...       each entry's bytes at its offset (4096-aligned), as ``common.weight_format.encode`` packs them

A cache is used only if everything matches: magic, the cache and packing versions, the source
weights' fingerprint, the entry list (the manifest's quantized weights: key, format, shape), the
file size, and every entry's CRC-32. Otherwise it is rebuilt, and a note says why (missing,
stale, truncated or corrupt). The rebuild writes a temporary file in OUT and renames it over the
old one: an interrupted quantization never leaves a half-written cache behind; an unwritable
OUT just means quantizing in memory at every load (also said).
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.manifest import WeightSpec
from common.progress import Progress
from common.weight_format import FORMATS, LAYOUT_VERSION, encode

MAGIC = b"QVKWCACH"
VERSION = 1  # of this file's layout (the packing has its own LAYOUT_VERSION)
ALIGN = 4096


class CacheInvalid(Exception):
    """Why a cache file cannot be used (the note's text)."""


def cache_path(module_dir: Path, fmt: str) -> Path:
    return Path(module_dir) / f"weights.{fmt}.bin"


def _entries(specs: list[WeightSpec]) -> list[dict]:
    """The header entries for ``specs`` (offsets assigned; no CRCs yet)."""
    out, offset = [], 0
    for w in specs:
        offset = (offset + ALIGN - 1) // ALIGN * ALIGN
        out.append({"key": w.key, "format": w.format, "shape": list(w.stored_shape), "offset": offset,
                    "nbytes": w.nbytes, "crc32": "00000000"})
        offset += w.nbytes
    return out


def _header_bytes(fingerprint: str, entries: list[dict]) -> bytes:
    head = json.dumps({"version": VERSION, "layout": LAYOUT_VERSION, "weights_fingerprint": fingerprint,
                       "entries": entries}).encode()
    return MAGIC + len(head).to_bytes(8, "little") + head


def read(path: Path, specs: list[WeightSpec], fingerprint: str) -> dict[str, np.ndarray]:
    """The packed bytes of each spec (views of a read-only memory map), or ``CacheInvalid``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(16)
            if len(start) < 16 or start[:8] != MAGIC:
                raise CacheInvalid("corrupt (not a weight cache file)")
            hlen = int.from_bytes(start[8:], "little")
            if hlen > size:
                raise CacheInvalid(f"truncated ({size} bytes, its header alone claims {hlen})")
            header = json.loads(f.read(hlen))
        entries = header["entries"]
        data_start = (16 + hlen + ALIGN - 1) // ALIGN * ALIGN
    except FileNotFoundError:
        raise CacheInvalid("missing") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CacheInvalid(f"corrupt header ({type(e).__name__})") from None
    if header.get("version") != VERSION or header.get("layout") != LAYOUT_VERSION:
        raise CacheInvalid(f"stale (written by cache version {header.get('version')}, packing "
                           f"{header.get('layout')}; this runtime writes {VERSION}, {LAYOUT_VERSION})")
    if header.get("weights_fingerprint") != fingerprint:
        raise CacheInvalid("stale (the model's weights changed since it was written)")
    want = [(e["key"], e["format"], e["shape"], e["nbytes"]) for e in _entries(specs)]
    try:
        have = [(e["key"], e["format"], e["shape"], e["nbytes"]) for e in entries]
    except (KeyError, TypeError):
        raise CacheInvalid("corrupt header (bad entry)") from None
    if have != want:
        raise CacheInvalid("stale (written for other weights or formats than this module's)")
    end = data_start + max((e["offset"] + e["nbytes"] for e in entries), default=0)
    if size < end:
        raise CacheInvalid(f"truncated ({size} of {end} bytes)")
    mm = np.memmap(path, np.uint8, "r")
    out = {}
    for e in entries:
        view = mm[data_start + e["offset"]: data_start + e["offset"] + e["nbytes"]]
        if f"{zlib.crc32(view):08x}" != e["crc32"]:
            raise CacheInvalid(f"corrupt (checksum mismatch in {e['key']})")
        out[e["key"]] = view
    return out


def write(path: Path, specs: list[WeightSpec], fingerprint: str, packed: Callable[[WeightSpec], np.ndarray],
          progress: Progress | None = None) -> None:
    """Pack every spec (``packed(spec)`` -> bytes) into a temporary file beside ``path``, then
    rename it over ``path``. Raises OSError if the directory is not writable."""
    entries = _entries(specs)
    head = _header_bytes(fingerprint, entries)
    data_start = (len(head) + ALIGN - 1) // ALIGN * ALIGN
    _remove_orphans(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for w, e in zip(specs, entries, strict=True):
                data = packed(w)
                e["crc32"] = f"{zlib.crc32(data):08x}"
                f.seek(data_start + e["offset"])
                f.write(memoryview(data))
                if progress:
                    progress.step()
            f.seek(0)
            f.write(_header_bytes(fingerprint, entries))  # same length: the CRCs are fixed-width
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_orphans(path: Path) -> None:
    """Temporary files of writers that died (SIGKILL, power loss) are removed; a live writer's stays."""
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


def load(module_dir: Path, specs: list[WeightSpec], fingerprint: str, source: Callable[[WeightSpec], np.ndarray],
         verbose: bool = True) -> dict[str, np.ndarray]:
    """The packed bytes of every quantized spec: from the cache, or quantized from ``source`` (the
    spec's float32 values) and cached. Notes (why the cache was rebuilt) go to stderr."""
    if not specs:
        return {}
    fmts = sorted({w.format for w in specs})
    path = cache_path(module_dir, "-".join(fmts))
    try:
        return read(path, specs, fingerprint)
    except CacheInvalid as e:
        if str(e) != "missing":
            print(f"note: {path}: {e}; rebuilding it", file=sys.stderr)

    def packed(w: WeightSpec) -> np.ndarray:
        return encode(source(w), FORMATS[w.format])

    label = f"quantizing weights to {'/'.join(fmts)} (once: cached in {path.name})"
    progress = Progress(label, len(specs)) if verbose else None
    try:
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "not writable")
        write(path, specs, fingerprint, packed, progress)
    except OSError as e:
        print(f"note: {path}: cannot write the quantized-weight cache ({e.strerror}); quantizing in memory, "
              "again at every load", file=sys.stderr)
        return {w.key: packed(w) for w in specs}
    finally:
        if progress:
            progress.done()
    return read(path, specs, fingerprint)
