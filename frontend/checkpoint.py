"""A model directory's weights: single or sharded safetensors, validated against the tensors the
model needs.

Access is lazy (memory-mapped); nothing is copied until a tensor is asked for, so tracing and
compiling never hold the weights in memory. It knows no model config: the caller says which
tensors it expects (the compiler from the config, the runtime from the compiled module).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from common.errors import UserError
from frontend import safetensors_io as st


class WeightStore:
    """Validated, lazily loaded tensors of one model directory. ``expected`` names every tensor
    the model needs with its checkpoint shape (``expected_params(cfg)`` when compiling; the
    compiled module's weight list when running, so the runtime parses no config)."""

    def __init__(self, model_dir: str | Path, expected: Mapping[str, tuple[int, ...]]) -> None:
        self.dir = Path(model_dir)
        self.expected = dict(expected)
        self.files = self._files()
        self._tensors: dict[str, st.TensorInfo] = {}
        self._starts: dict[Path, int] = {}
        self._headers: dict[Path, bytes] = {}
        for f in self.files:
            tensors, start, raw = st.read_header(f)
            self._starts[f], self._headers[f] = start, raw
            self._tensors.update(tensors)
        self._validate()

    def _files(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
                if not isinstance(wm, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{index}: broken index (expected JSON with a 'weight_map' object)") from None
            files = sorted({str(v) for v in wm.values()})
            for f in files:
                if not (self.dir / f).is_file():
                    raise UserError(f"{index}: names shard '{f}', which is missing from {self.dir}")
            return [self.dir / f for f in files]
        single = self.dir / "model.safetensors"
        if single.is_file():
            return [single]
        raise UserError(f"{self.dir}: no model.safetensors or model.safetensors.index.json found")

    def _validate(self) -> None:
        for name, shape in self.expected.items():
            info = self._tensors.get(name)
            if info is None:
                raise UserError(f"{self.dir}: tensor '{name}' is missing (expected shape {list(shape)})")
            if info.dtype not in st.DTYPES:
                raise UserError(f"{info.path}: tensor '{name}' has dtype {info.dtype}, expected BF16, F16 or F32 "
                                "(quantized checkpoints are not supported)")
            if info.shape != shape:
                raise UserError(f"{info.path}: tensor '{name}' has shape {list(info.shape)}, "
                                f"expected {list(shape)} from config.json")

    def info(self, name: str) -> st.TensorInfo:
        return self._tensors[name]

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (converted from its stored dtype)."""
        info = self._tensors[name]
        return st.load(info, self._starts[info.path])

    def fingerprint(self) -> str:
        """A cheap identity of the weights: every header plus a sample of every tensor's bytes.

        A checkpoint rewritten with other values (e.g. another seed) changes the samples; reading
        all bytes of a multi-GB model at every start would cost seconds, so we sample.
        """
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.name.encode())
            h.update(self._headers[f])
        for name in sorted(self.expected):
            info = self._tensors[name]
            n = info.end - info.start
            with open(info.path, "rb") as fh:
                for off in sorted({0, n // 2, max(0, n - 256)}):
                    fh.seek(self._starts[info.path] + info.start + off)
                    h.update(fh.read(min(256, n)))
        return h.hexdigest()[:32]
