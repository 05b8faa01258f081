"""Build one kernel: TE/TIR -> dlight schedule -> TVM's WebGPU codegen (WGSL) + launch metadata.

The launch metadata follows TVM's own web runtime ABI (``tvm/web/src/webgpu.ts``): buffer
bindings 0..n-1, then a uniform ``PODArgs`` struct of the scalar params plus ``packGridDimX``.
Grid and workgroup extents come from the scheduled TIR's thread bindings, as Python expressions
of the runtime scalars (``seq``, ``total``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import tvm

from lowering.kernels.common import SCALARS, opaque_loop_extents
from lowering.kernels.spec import KernelSpec
from lowering.schedule import apply_rule, rules_for

SCHEDULE_VERSION = "3"  # bump when the build steps here change the WGSL
_BIND_RE = re.compile(r"@binding\((\d+)\) var<storage, (read|read_write)> (\w+) : array<([\w<>]+)>")
_POD_RE = re.compile(r"struct PODArgs \{([^}]*)\}")
_WG_RE = re.compile(r"@workgroup_size\((\d+), (\d+), (\d+)\)")
_ENTRY_RE = re.compile(r"fn (\w+)\(\s*@builtin")


@dataclass
class Kernel:
    name: str
    key: str
    kclass: str
    rule: str
    entry: str
    wgsl: str
    bindings: list[dict]  # per binding slot: {"arg": index into spec.args, "write": bool, "type": "f32"}
    pod: list[str]  # scalar fields of PODArgs before packGridDimX
    workgroup: list[int]
    grid: list[str]  # blockIdx.x, blockIdx.y, blockIdx.z extents as expressions of seq/total

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("wgsl")
        return d


_BINDING_RE = re.compile(r'T\.thread_binding\((.+?), thread="(blockIdx\.[xyz]|threadIdx\.[xyz])"')
_EXTENT_OK = re.compile(r"^[\w\s+\-*/%(),]*$")


def _launch_extents(func) -> dict[str, str]:
    """Extents of the thread-bound loops in the scheduled TIR, as Python expressions of seq/total
    (TVMScript prints them in Python syntax, e.g. ``(seq + 31) // 32``)."""
    extents: dict[str, str] = {}
    for extent, tag in _BINDING_RE.findall(func.script()):
        extent = re.sub(r"T\.(?:int64|int32)\(([^()]*)\)", r"\1", extent)
        extent = extent.replace("T.min", "min").replace("T.max", "max")
        if extent.startswith("0, "):
            extent = extent[3:]
        if not _EXTENT_OK.match(extent):
            raise RuntimeError(f"launch extent {extent!r} of {tag} is not a supported expression")
        extents.setdefault(tag, extent)
    return extents


def _parse(spec: KernelSpec, name: str, src: str, func, rule: str) -> Kernel:
    """Launch metadata from the WGSL and the scheduled ``func`` (whose buffer params, in order, are
    the spec's args)."""
    extents = _launch_extents(func)
    param_names = [p.name for p in func.params if p.name not in SCALARS]
    start = src.find("enable f16;") if "enable f16;" in src else src.find("@group")
    wgsl = src[start:] if start >= 0 else src
    entries = _ENTRY_RE.findall(wgsl)
    if len(entries) != 1:
        raise RuntimeError(f"kernel {spec.key}: expected one WGSL entry point, got {entries}")
    names = {f"{p}{suffix}": i for i, p in enumerate(param_names) for suffix in ("", "_ptr")}
    bindings = []
    for slot, access, var, ty in _BIND_RE.findall(wgsl):
        if var not in names:
            raise RuntimeError(f"kernel {spec.key}: unknown WGSL binding {var}")
        bindings.append({"slot": int(slot), "arg": names[var], "write": access == "read_write", "type": ty})
    bindings.sort(key=lambda b: b["slot"])
    pod_m = _POD_RE.search(wgsl)
    pod = [f.split(":")[0].strip() for f in pod_m.group(1).split(",") if f.strip()] if pod_m else []
    pod = [p for p in pod if p != "packGridDimX"]
    for p in pod:
        if p not in SCALARS:
            raise RuntimeError(f"kernel {spec.key}: unexpected scalar param {p!r}")
    wg = [int(x) for x in _WG_RE.search(wgsl).groups()]
    grid = [extents.get(f"blockIdx.{a}", "1") for a in "xyz"]
    if grid[2] != "1":
        raise RuntimeError(f"kernel {spec.key}: blockIdx.z is reserved for grid folding")
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


def build_kernel(spec: KernelSpec, name: str, use_cache: bool = True, first_variant_only: bool = False
                 ) -> tuple[Kernel, bool]:
    """Returns the kernel and whether it came from the on-disk cache. Tries the spec's scheduled
    variants in order, then the dlight rules of its class (unless ``first_variant_only``)."""
    func = spec.build()
    script = func.script()
    variants = [v for v, _ in spec.variants][:1 if first_variant_only else None]
    ident = f"{tvm.__version__}|{SCHEDULE_VERSION}|{_GENERATORS}|{spec.kclass}|{variants}|{script}"
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
                # a fresh module per attempt: a rule that fails half-way can leave its input modified
                mod = tvm.IRModule({name: builder().with_attr("global_symbol", name)})
                scheduled = mod if prescheduled else apply_rule(mod, rule, target)
                if scheduled is None:
                    continue
                with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
                    ex = tvm.tirx.build(scheduled, target=target, pipeline=_PIPELINE)
                kernel = _parse(spec, name, ex.imports[0].inspect_source(), scheduled[name], rule)
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
