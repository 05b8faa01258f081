"""The compiled module's manifest: the one contract between the compiler and the runtime.

``lowering.module`` writes a :class:`Manifest`; ``runtime.compiled`` reads the same class back.
Everything the runtime needs is here as typed data: which weights to upload and in which format
(:class:`WeightSpec`), the KV cache (:class:`KVCacheSpec`), per phase where every tensor lives
and which kernels run with which launch grid (expressions as data, ``common.expr``). The runtime
parses no model config and knows no model family.

Reading validates every field against these types, so a corrupt or foreign manifest is one
clear error at load, not a KeyError in the middle of a step.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import expr
from common.dtypes import DTYPE_BYTES
from common.errors import UserError
from common.weight_format import FORMATS, of_dtype

FORMAT_VERSION = 6
MANIFEST_FILE = "manifest.json"
PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class WeightSpec:
    """One weight tensor as the GPU holds it: the checkpoint ``param`` (whole, or the row range
    ``rows`` of it when a weight is split across bindings), in ``format`` (a
    ``common.weight_format`` name: f32 | f16 | q8 | q4), which gives its bytes and its packing."""

    param: str
    shape: tuple[int, ...]  # of the whole tensor in the checkpoint
    format: str
    rows: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return f"weight:{self.param}:{list(self.rows) if self.rows else ''}"

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return (self.rows[1] - self.rows[0], *self.shape[1:]) if self.rows else self.shape

    @property
    def nbytes(self) -> int:
        return FORMATS[self.format].nbytes(self.stored_shape)


@dataclass(frozen=True)
class KVCacheSpec:
    """Per layer one K and one V buffer of [kv_heads, capacity, head_dim] elements of ``dtype``."""

    layers: int
    kv_heads: int
    head_dim: int
    capacity: int
    dtype: str

    @property
    def buffer_bytes(self) -> int:
        return self.kv_heads * self.capacity * self.head_dim * DTYPE_BYTES[self.dtype]

    def names(self) -> list[str]:
        return [f"cache_{kv}.{i}" for i in range(self.layers) for kv in "kv"]


@dataclass(frozen=True)
class Storage:
    """Where a tensor of a phase lives: ``weight`` (``WeightSpec.key``), ``input`` (token ids),
    ``cache`` (a KV buffer by its name), ``slot`` (an activation buffer index)."""

    kind: str
    shape: tuple[int | str, ...]
    dtype: str
    slot: int | None = None
    weight: str | None = None

    def nbytes(self, dims: dict[str, int]) -> int:
        """Size at these values of the symbolic dims (``seq``, ``total``, ``ctx``)."""
        shape = [dims[d] if isinstance(d, str) else d for d in self.shape]
        if self.kind == "weight":
            return of_dtype(self.dtype).nbytes(shape)
        n = DTYPE_BYTES[self.dtype]
        for d in shape:
            n *= d
        return n


@dataclass
class Dispatch:
    node: str
    op: str
    kernel: str  # replaced by a tuned alternate at load when tuning.json says so
    kclass: str
    args: list[str]  # per kernel buffer param: a tensor name of the plan, or "const:<name>"
    flops: expr.Expr
    bytes: expr.Expr


@dataclass
class Plan:
    tensors: dict[str, Storage]
    slots: list[int]  # activation buffer sizes in bytes
    dispatches: list[Dispatch]
    outputs: dict[str, str]  # output name (logits, cache_k.0, ...) -> tensor

    def arg_bytes(self, args: list[str], seq: int, total: int, ctx: int) -> list[int]:
        """Byte size of each dispatch arg at these scalars (benchmarks allocate stand-ins). A
        ``const:...:<rows>x<cols>`` arg is a table of 4-byte values the runtime makes (``runtime.constants``)."""
        dims = {"seq": seq, "total": total, "ctx": ctx}
        return [const_nbytes(a) if a.startswith("const:") else self.tensors[a].nbytes(dims) for a in args]


SCRATCH_PREFIX = "const:scratch:"  # split-K GEMM records (lowering.kernels.gemm): working memory the runtime sizes


def const_nbytes(name: str) -> int:
    """Bytes of a ``const:...:<rows>x<cols>`` runtime constant (4-byte values, ``runtime.constants``)."""
    rows, cols = (int(x) for x in name.rsplit(":", 1)[1].split("x"))
    return 4 * rows * cols


@dataclass(frozen=True)
class Binding:
    slot: int
    arg: int  # index into the dispatch's args
    write: bool
    type: str  # WGSL element type
    bytes: int = 0  # what the kernel declares it uses of the buffer (0: sized by seq/total, or not declared)


@dataclass(frozen=True)
class KernelInfo:
    key: str
    kclass: str
    rule: str  # the schedule that built it
    entry: str
    file: str
    bindings: list[Binding]
    pod: list[str]  # scalar fields of PODArgs before packGridDimX, in order
    workgroup: tuple[int, int, int]
    grid: tuple[expr.Expr, expr.Expr, expr.Expr]  # workgroups along x, y, z
    alternates: list[str] = field(default_factory=list)  # other schedules (runtime.tune picks)


@dataclass(frozen=True)
class CompileOptions:
    weight_dtype: str
    max_context: int
    prefill_chunk: int
    max_binding_bytes: int
    quantize: str = "none"  # none | q8 | q4: the format of the 2-D weights (see WeightSpec.format)


@dataclass(frozen=True)
class Requirements:
    features: list[str]
    limits: dict[str, int]
    optional_features: list[str]


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know of the model, no more."""

    family: str
    vocab_size: int
    layers: int


@dataclass(frozen=True)
class GreedyKernels:
    """Greedy decoding on the GPU (``lowering.kernels.sampling``): ``partial`` reads the decode
    logits row into a scratch buffer of ``scratch_bytes``, ``final`` writes the argmax into the
    input-id buffer, so the next decode step reads it without a round trip through the host."""

    partial: str
    final: str
    scratch_bytes: int


@dataclass
class Manifest:
    format_version: int
    tvm_version: str
    created: str
    model_dir: str
    model: ModelInfo
    config: dict[str, Any]  # the model's config as read (shown by tools; the runtime does not parse it)
    weights_fingerprint: str
    options: CompileOptions
    requires: Requirements
    weights: list[WeightSpec]
    kv_cache: KVCacheSpec
    kernels: dict[str, KernelInfo]
    phases: dict[str, Plan]
    calibration: dict[str, str]  # role -> kernel (e.g. the copy kernel bench times as a ceiling)
    greedy: GreedyKernels
    tuned_on: str | None = None  # set at load from tuning.json

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> Manifest:
        """Parse and type-check; ValueError names the first bad field."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise VersionError(raw.get("format_version"))
        m = _load(Manifest, raw, "manifest")
        for name, k in m.kernels.items():
            for i, e in enumerate(k.grid):
                _check_expr(e, f"kernels.{name}.grid[{i}]")
        for phase in PHASES:
            if phase not in m.phases:
                raise ValueError(f"no '{phase}' plan")
        for phase, plan in m.phases.items():
            for d in plan.dispatches:
                if d.kernel not in m.kernels:
                    raise ValueError(f"phases.{phase}: dispatch {d.node} names unknown kernel {d.kernel!r}")
                _check_expr(d.flops, f"phases.{phase}.{d.node}.flops")
                _check_expr(d.bytes, f"phases.{phase}.{d.node}.bytes")
        return m


def load_manifest(directory: Path) -> Manifest:
    """The manifest of a compiled module directory, or a one-line UserError saying what is wrong."""
    mf = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise UserError(f"{directory}: not a compiled module directory (run python -m frontend.compile MODEL_DIR "
                        "first)")
    if not mf.is_file():
        raise UserError(f"{mf}: missing (not a compiled module, or an interrupted compile)")
    try:
        return Manifest.from_json(mf.read_text())
    except VersionError as e:
        raise UserError(f"{mf}: {e}; recompile with python -m frontend.compile") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{mf}: corrupt manifest ({e})") from None


class VersionError(ValueError):
    def __init__(self, found: Any) -> None:
        super().__init__(f"format version {found}, this runtime reads version {FORMAT_VERSION}")
        self.found = found


def _check_expr(e: Any, where: str) -> None:
    try:
        expr.validate(e)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _load(tp: Any, v: Any, where: str) -> Any:
    """``v`` (parsed JSON) as an instance of the annotation ``tp``, recursively."""
    if tp is Any or tp == expr.Expr:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return _load(a, v, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {v!r} is not {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise ValueError(f"{where}: expected an object, got {type(v).__name__}")
        hints = typing.get_type_hints(tp)
        out = {}
        for f in dataclasses.fields(tp):
            if f.name in v:
                out[f.name] = _load(hints[f.name], v[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field '{f.name}'")
        return tp(**out)
    if origin is list:
        if not isinstance(v, list):
            raise ValueError(f"{where}: expected a list")
        return [_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is tuple:
        if not isinstance(v, list):
            raise ValueError(f"{where}: expected a list")
        items = args[:1] * len(v) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(v):
            raise ValueError(f"{where}: expected {len(items)} entries, got {len(v)}")
        return tuple(_load(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(items, v, strict=True)))
    if origin is dict:
        if not isinstance(v, dict):
            raise ValueError(f"{where}: expected an object")
        return {k: _load(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if tp in (int, str, bool, float) and (type(v) is tp):
        return v
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(v).__name__} {v!r}")
