"""Build one kernel: TE/TIR -> dlight schedule -> TVM's WebGPU codegen (WGSL) + launch metadata.

The launch metadata follows TVM's own web runtime ABI (``tvm/web/src/webgpu.ts``): buffer
bindings 0..n-1, then a uniform ``PODArgs`` struct of the scalar params plus ``packGridDimX``.
The launch grid is read from the lowered device kernel's ``blockIdx`` ``thread_extent``
attributes, PrimExprs converted to ``common.expr`` trees of the runtime scalars (``seq``,
``total``); the workgroup size from the WGSL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx.build import split_host_device_mods, tir_to_runtime

from common import expr
from lowering.kernels.common import SCALARS, opaque_loop_extents
from lowering.kernels.spec import KernelSpec
from lowering.schedule import apply_rule, rules_for

SCHEDULE_VERSION = "7"  # bump when the build steps here change the WGSL or the cached Kernel record
_BIND_RE = re.compile(r"@binding\((\d+)\) var<storage, (read|read_write)> (\w+) : array<([\w<>]+)>")
_POD_RE = re.compile(r"struct PODArgs \{([^}]*)\}")
_WG_RE = re.compile(r"@workgroup_size\((\d+), (\d+), (\d+)\)")
_ENTRY_RE = re.compile(r"fn (\w+)\(\s*@builtin")
_ATOMIC_USE_RE = re.compile(r"\batomic\w+\(\(&\((\w+)\[")
_C_CAST_RE = re.compile(r"\(\(\w+\*\)(\w+)\)")


@dataclass
class Kernel:
    name: str
    key: str
    kclass: str
    rule: str
    entry: str
    wgsl: str
    bindings: list[dict]  # per binding slot: {"arg": index into spec.args, "write": bool, "type": "f32",
    #                       "bytes": the kernel's declared size of the buffer, 0 when it follows seq/total}
    pod: list[str]  # scalar fields of PODArgs before packGridDimX
    workgroup: list[int]
    grid: list[expr.Expr]  # blockIdx.x, blockIdx.y, blockIdx.z extents: expression trees of seq/total

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("wgsl")
        return d


_BINARY: dict[type, str] = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%",
                            tirx.Min: "min", tirx.Max: "max"}


def _to_expr(e: tirx.PrimExpr) -> expr.Expr:
    """A launch extent as a ``common.expr`` tree: integer constants, the runtime scalars and the
    integer ops of ``_BINARY`` (a cast between integer types, which NarrowDataType may leave, is
    transparent); anything else is refused rather than guessed at."""
    if isinstance(e, tirx.IntImm):
        return int(e.value)
    if isinstance(e, tirx.Var) and e.name in expr.VARS:
        return e.name
    if isinstance(e, tirx.Cast) and str(e.ty).startswith("int"):
        return _to_expr(e.value)
    op = _BINARY.get(type(e))
    if op is None:
        raise RuntimeError(f"launch extent {e} is not a supported expression ({type(e).__name__})")
    return [op, _to_expr(e.a), _to_expr(e.b)]


def _launch_grid(device: tvm.IRModule, key: str) -> list[expr.Expr]:
    """``[x, y, z]`` workgroup counts: the ``thread_extent`` of each ``blockIdx`` axis in the one
    lowered device kernel (1 for an axis it does not bind)."""
    funcs = list(device.functions.values())
    if len(funcs) != 1:
        raise RuntimeError(f"kernel {key}: expected one device function, got {len(funcs)}")
    extents: dict[str, list[expr.Expr]] = {}

    def visit(a: tirx.AttrStmt) -> None:
        if a.attr_key == "thread_extent" and a.node.thread_tag.startswith("blockIdx."):
            extents.setdefault(a.node.thread_tag, []).append(_to_expr(a.value))

    tvm_ffi.structural_walk(funcs[0], (tirx.AttrStmt, visit))
    grid = []
    for axis in "xyz":
        found = extents.get(f"blockIdx.{axis}", [1])
        if any(e != found[0] for e in found):
            raise RuntimeError(f"kernel {key}: blockIdx.{axis} launched with different extents {found}")
        grid.append(found[0])
    if grid[2] != 1:
        raise RuntimeError(f"kernel {key}: blockIdx.z is reserved for grid folding")
    return grid


def _declared_bytes(func) -> dict[str, int]:
    """Bytes of each buffer param whose shape the kernel declares as constants (a schedule's own
    need: a split-K GEMM's records), by param name; params shaped by ``seq``/``total`` are left out."""
    out = {}
    for p in func.params:  # TVM 0.27: a buffer param carries its shape and dtype
        shape = getattr(p, "shape", None)
        if shape and all(isinstance(d, tirx.IntImm) for d in shape):
            dt = tvm.DataType(str(p.dtype))
            out[p.name] = math.prod(int(d) for d in shape) * dt.bits * dt.lanes // 8
    return out


def _parse(spec: KernelSpec, name: str, src: str, func, rule: str, grid: list[expr.Expr]) -> Kernel:
    """Launch metadata from the WGSL and the scheduled ``func`` (whose buffer params, in order, are
    the spec's args)."""
    param_names = [p.name for p in func.params if p.name not in SCALARS]
    start = src.find("enable f16;") if "enable f16;" in src else src.find("@group")
    wgsl = src[start:] if start >= 0 else src
    entries = _ENTRY_RE.findall(wgsl)
    if len(entries) != 1:
        raise RuntimeError(f"kernel {spec.key}: expected one WGSL entry point, got {entries}")
    names = {f"{p}{suffix}": i for i, p in enumerate(param_names) for suffix in ("", "_ptr")}
    declared = _declared_bytes(func)
    bindings = []
    for slot, access, var, ty in _BIND_RE.findall(wgsl):
        if var not in names:
            raise RuntimeError(f"kernel {spec.key}: unknown WGSL binding {var}")
        bindings.append({"slot": int(slot), "arg": names[var], "write": access == "read_write", "type": ty,
                         "bytes": declared.get(param_names[names[var]], 0)})
    bindings.sort(key=lambda b: b["slot"])
    pod_m = _POD_RE.search(wgsl)
    pod = [f.split(":")[0].strip() for f in pod_m.group(1).split(",") if f.strip()] if pod_m else []
    pod = [p for p in pod if p != "packGridDimX"]
    for p in pod:
        if p not in SCALARS:
            raise RuntimeError(f"kernel {spec.key}: unexpected scalar param {p!r}")
    wg = [int(x) for x in _WG_RE.search(wgsl).groups()]
    return Kernel(name, spec.key, spec.kclass, rule, entries[0], wgsl, bindings, pod, wg, grid)


def _pipeline() -> tuple[tvm.transform.Pass, Callable[[], tvm.transform.Pass], Callable[[], tvm.transform.Pass]]:
    """TVM's default TIR pipeline, plus a last device pass that keeps loop trip counts from depending
    on uniforms alone (lavapipe recompiles such shaders per dispatch: see ``opaque_loop_extents``)."""
    lower, host, device = tvm.tirx.get_tir_pipeline("s_tir")
    opaque = tvm.tirx.transform.prim_func_pass(lambda f, _m, _c: opaque_loop_extents(f), opt_level=0,
                                               name="OpaqueLoopExtents")
    return lower, host, lambda: tvm.transform.Sequential([device(), opaque])


_PIPELINE = "qwen3vk"
tvm.tirx.register_tir_pipeline(_PIPELINE, _pipeline)


def _compile(scheduled: tvm.IRModule, target: tvm.target.Target) -> tuple[str, tvm.IRModule]:
    """WGSL source and the lowered device module of a scheduled kernel. The steps of
    ``tvm.tirx.build`` (``tvm/tirx/build.py``: bind target, pipeline, host/device split, finalize,
    codegen), taken one by one so the device module the WGSL is generated from is in hand."""
    lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline(_PIPELINE)
    host, devices = split_host_device_mods(lower(tirx.transform.BindTarget(target)(scheduled)))
    if len(devices) != 1:
        raise RuntimeError(f"expected one device module, got {len(devices)}")
    (dev_target, device), = devices.items()
    lib = tir_to_runtime(finalize_host()(host), {dev_target: finalize_device()(device)}, target.host)
    return atomic_bindings(workgroup_addresses(lib.imports[0].inspect_source())), device


def workgroup_addresses(wgsl: str) -> str:
    """``T.address_of(S[i])`` of a workgroup (shared) array comes out of TVM's codegen as
    ``&(((i32*)S)[i])``, a C cast that is no WGSL: ``&(S[i])`` (the argument of
    ``workgroupUniformLoad``)."""
    return _C_CAST_RE.sub(r"\1", wgsl)


def atomic_bindings(wgsl: str) -> str:
    """Storage buffers a kernel uses through WGSL atomics (``T.call_extern("int32", "atomicAdd",
    T.address_of(B[i]), 1)``, printed as ``atomicAdd((&(B_ptr[i])), 1i)``) declared as
    ``array<atomic<i32>>``, read-write: TVM's codegen knows no atomic types and declares them by
    their element type, read-only when it sees no store. Such a buffer must be used only through
    atomics (WGSL has no plain access to an atomic)."""
    for name in set(_ATOMIC_USE_RE.findall(wgsl)):
        wgsl, n = re.subn(rf"var<storage, read(?:_write)?> {name} : array<(\w+)>;",
                          rf"var<storage, read_write> {name} : array<atomic<\1>>;", wgsl)
        if n != 1:
            raise RuntimeError(f"atomic buffer {name}: expected one storage declaration to retype, found {n}")
    return wgsl


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C takes effect at the end of the block. TVM calls Python from C++ (dlight rules, the
    loop-extent pass), and a KeyboardInterrupt raised inside such a callback comes back as a
    RuntimeError, which the loop over schedule rules would take for "this rule does not fit": the
    interrupt would be lost (or silently cost a kernel its schedule)."""
    old = signal.getsignal(signal.SIGINT)
    if old is None or threading.current_thread() is not threading.main_thread():  # None: not set from Python
        yield
        return
    hit: list[object] = []
    signal.signal(signal.SIGINT, lambda _s, frame: hit.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if hit:
            if callable(old):
                old(signal.SIGINT, hit[0])  # the default one raises KeyboardInterrupt
            else:
                signal.raise_signal(signal.SIGINT)


def _generator_digest() -> str:
    """Hash of the kernel generator sources: an edited schedule template must not hit a stale cache."""
    h = hashlib.sha256()
    for f in sorted((Path(__file__).parent / "kernels").glob("*.py")) + [Path(__file__).with_name("schedule.py")]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


_GENERATORS = _generator_digest()


def cache_dir() -> Path:
    return Path(os.environ.get("QWEN3VK_CACHE", Path.home() / ".cache" / "qwen3-vk")) / "kernels"


def build_kernel(spec: KernelSpec, name: str, use_cache: bool = True, first_variant_only: bool = False,
                 func: tirx.PrimFunc | None = None) -> tuple[Kernel, bool]:
    """Returns the kernel and whether it came from the on-disk cache. Tries the spec's scheduled
    variants in order, then the dlight rules of its class (unless ``first_variant_only``).
    ``func``: ``spec.build()`` when the caller already has it (a kernel's alternates share their
    spec's ``build``): TVMScript parsing is most of a kernel's build time, so no builder runs twice."""
    if func is None:
        func = spec.build()
    variants = [v for v, _ in spec.variants][:1 if first_variant_only else None]
    ident = f"{tvm.__version__}|{SCHEDULE_VERSION}|{_GENERATORS}|{spec.kclass}|{variants}|{func.script()}"
    digest = hashlib.sha256(ident.encode()).hexdigest()
    path = cache_dir() / f"{digest[:40]}.json"
    if use_cache and path.is_file():
        try:
            d = json.loads(path.read_text())
            d["name"] = name
            return Kernel(**d), True
        except (ValueError, TypeError):
            pass  # a corrupt cache entry is rebuilt
    target = tvm.target.Target("webgpu", host="llvm")
    kernel = None
    errors = []
    attempts = [(v, b, True) for v, b in spec.variants]
    if first_variant_only:
        attempts = attempts[:1]
    else:
        attempts += [(r, spec.build, False) for r in rules_for(spec.kclass)]
    with _sigint_deferred():
        for rule, builder, prescheduled in attempts:  # the first that schedules *and* builds wins
            try:
                # a fresh module per attempt: a rule that fails half-way can leave its input modified;
                # a prescheduled variant built by spec.build is only compiled: the function in hand
                f = func if prescheduled and builder is spec.build else builder()
                mod = tvm.IRModule({name: f.with_attr("global_symbol", name)})
                scheduled = mod if prescheduled else apply_rule(mod, rule, target)
                if scheduled is None:
                    continue
                with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
                    src, device = _compile(scheduled, target)
                kernel = _parse(spec, name, src, scheduled[name], rule, _launch_grid(device, spec.key))
                break
            except Exception as e:  # noqa: BLE001 - a rule that cannot handle this shape: try the next
                errors.append(f"{rule}: {str(e).strip().splitlines()[0][:160]}")
    if kernel is None:
        raise RuntimeError(f"kernel {spec.key}: no schedule rule built it ({'; '.join(errors)})")
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(kernel)))
            tmp.replace(path)
        except OSError:
            pass  # caching is an optimisation; an unwritable cache dir must not fail the build
    return kernel, False
