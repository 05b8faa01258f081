"""Every kernel of a compiled module, alone on the Vulkan device, against numpy in float64.

Each kernel gets fresh random inputs and a NaN-poisoned output, for several values of the
symbolic dims (seq 1, 7, 64 in prefill; several cache lengths in decode). The expected value is
the numpy reference rule of the node the kernel implements, evaluated in float64.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from common.weight_format import QUANTIZED_DTYPES, decode, encode, of_dtype
from ir import reference
from ir.serialize import from_json
from ir.shapes import resolve
from lowering.module import kernel_info
from lowering.plan import storage_root
from runtime.compiled import load_compiled
from runtime.constants import make_constant
from runtime.device import open_device
from runtime.launcher import KernelLauncher

_NP = {"float16": np.float16, "float32": np.float32, "int32": np.int32}
KCLASSES = {"gemv", "gemm", "attention", "batched_gemm", "norm", "softmax", "elementwise", "copy",
            "gather", "kv_write"}


def _cases(module):
    for phase, seqs in (("prefill", (1, 7, 64)), ("decode", (1,))):
        g = from_json((module.path / "graphs" / f"{phase}.json").read_text())
        seen = set()
        for d in module.manifest.phases[phase].dispatches:
            if d.kernel in seen:
                continue
            seen.add(d.kernel)
            for seq in seqs:
                # decode: one and several chunks of the fused attention's cache walk
                for past in ((0, 5) if phase == "prefill" else (0, 40, 290, 700)):
                    yield phase, g, d, seq, seq + past


def _random(shape, dtype, rng, vocab):
    """Random contents of a kernel arg: token ids, floats, or a quantized weight's packed bytes."""
    if dtype == "int32":
        return rng.integers(0, vocab, shape).astype(np.int32)
    if dtype in QUANTIZED_DTYPES:
        return encode(rng.standard_normal(shape).astype(np.float32), of_dtype(dtype))
    return rng.standard_normal(shape).astype(_NP[dtype])


def _value(arr, t, dims):
    """What an arg's contents mean to the reference rule: float64 values (a quantized weight's
    packed bytes decoded, as the kernels dequantize them)."""
    if t is not None and t.dtype in QUANTIZED_DTYPES:
        return decode(arr, resolve(t.shape, dims), of_dtype(t.dtype)).astype(np.float64)
    return arr.astype(np.float64) if arr.dtype != np.int32 else arr


@pytest.mark.parametrize("wdtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_every_kernel_against_numpy(compiled, wdtype, tol):
    module = load_compiled(compiled("tiny-gqa4", "f32", wdtype, max_context=704, prefill_chunk=64))
    assert check_every_kernel(module, tol) == KCLASSES


def check_every_kernel(module, tol: float) -> set[str]:
    """Run every kernel of ``module`` on random args (``_cases``) against the reference rule of
    its node; returns the kernel classes covered."""
    dev = open_device()
    vocab = module.manifest.model.vocab_size
    launchers = {}
    covered = set()
    rng = np.random.default_rng(0)
    ctx = module.manifest.options.max_context
    for phase, g, d, seq, total in _cases(module):
        dims = {"seq": seq, "total": total, "ctx": ctx}
        node = g[d.node]
        tensors = module.manifest.phases[phase].tensors
        arrays, made = [], {}
        for a in d.args:
            if a.startswith("const:"):
                arrays.append(make_constant(a))
                continue
            if a not in made:  # a quantized weight is two args (codes, scales) of one buffer
                made[a] = _random(resolve(tensors[a].shape, dims), tensors[a].dtype, rng, vocab)
            arrays.append(made[a])
        out_idx = [b.arg for b in module.manifest.kernels[d.kernel].bindings if b.write]
        # the node's own result (a kernel may also update a cache in place as a side effect)
        o = next(i for i in out_idx if d.args[i] == storage_root(g, node.name))
        expect_inputs = {a: _value(arr, tensors.get(a), dims) for a, arr in zip(d.args, arrays, strict=True)}
        if node.op != "kv_cache_write":
            arrays[o] = np.full_like(arrays[o], np.nan)
        # the node's operands, as views of the kernel args (reshape / KV-cache read resolved)
        args = []
        for i in node.inputs:
            src = g[i]
            root = i
            while g[root].op in ("reshape", "kv_cache_read", "kv_cache_write") and root not in expect_inputs:
                root = g[root].inputs[0]
            val = expect_inputs[root]
            if src.op == "kv_cache_read":
                val = val[None, :, :total, :]
            else:
                val = val.reshape(resolve(src.shape, dims))
            args.append(val)
        expected = reference.evaluate(node, args, dims)
        key = d.kernel
        if key not in launchers:
            launchers[key] = KernelLauncher(dev.device, key, module.manifest.kernels[key], module.wgsl[key])
        got = launchers[key](arrays, seq, total)[o]
        err = np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30)
        assert np.isfinite(got).all() and err <= tol, f"{key} ({node.name}) seq={seq} total={total}: rel err {err:.2e}"
        covered.add(d.kclass)
    return covered


@pytest.mark.parametrize("wdtype", ["float32", "float16"])
def test_every_gemv_variant_against_numpy(wdtype):
    """Each schedule the tuner may pick, on shapes with row and K tails, with and without the residual."""
    from lowering.build import build_kernel
    from lowering.kernels import gemv
    from lowering.kernels.spec import KernelSpec

    dev = open_device()
    rng = np.random.default_rng(1)
    cases = [(389, 64, False, None, False), (64, 160, True, None, False), (3, 1028, False, None, False),
             (70, 96, False, 1e-6, False), (33, 64, False, None, True), (40, 132, True, 1e-5, True)]
    for n, k, res, eps, swiglu in cases:
        a = rng.standard_normal((1, k)).astype(np.float32)
        w, u = (rng.standard_normal((n, k)).astype(_NP[wdtype]) for _ in range(2))
        gw = rng.standard_normal(k).astype(_NP[wdtype])
        r = rng.standard_normal((1, n)).astype(np.float32)
        x = a.astype(np.float64)
        if eps is not None:
            x = x / np.sqrt(np.mean(x * x) + eps) * gw
        expected = x @ w.astype(np.float64).T
        if swiglu:
            expected = expected / (1 + np.exp(-expected)) * (x @ u.astype(np.float64).T)
        expected = expected + (r if res else 0)
        args = [a, w, *([u] if swiglu else []), *([gw] if eps is not None else []), *([r] if res else [])]
        for ts, tr in gemv.VARIANTS:
            name = gemv.variant_name(ts, tr)
            builder = gemv.gemv_func(n, k, wdtype, res, ts, tr, eps, swiglu)
            spec = KernelSpec(f"t{n}x{k}", "gemv", builder, [f"x{i}" for i in range(len(args) + 1)], [len(args)],
                              variants=[(name, builder)])
            kern, _ = build_kernel(spec, "gemv_test", use_cache=False)
            assert kern.rule == name
            got = KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)(
                [*args, np.full((1, n), np.nan, np.float32)], 1, 1)[-1]
            err = np.abs(got - expected).max() / np.abs(expected).max()
            assert err < 1e-5, f"{name} {n}x{k} res={res} norm={eps} swiglu={swiglu}: rel err {err:.1e}"


# WGSL builtins and types that may appear in a condition; any other identifier is a value that
# varies per invocation (a builtin id, a loop variable, a `var`) unless it is a `let` of uniforms
_WGSL_PURE = {"min", "max", "select", "clamp", "abs", "i32", "u32", "f32", "f16", "bool", "vec2", "vec3", "vec4",
              "true", "false"}
_LET = re.compile(r"\blet (\w+) : [\w<>]+ = (.*);$")
_FOR = re.compile(r"\bfor \(var (\w+) : \w+ = [^;]*; ([^;]*); [^)]*\) \{$")
_IF = re.compile(r"\b(?:if|while) \((.*)\) \{$")


def _uniform_only_conditions(wgsl: str) -> tuple[list[str], int]:
    """Loop bounds and branch conditions of ``wgsl`` computed from ``podArgs`` fields (and
    constants) alone, and how many loops and branches were scanned. Mesa's lavapipe inlines the
    uniforms of such conditions (``nir_find_inlinable_uniforms``: if conditions, and loop
    terminators comparing the induction variable with uniforms) and recompiles the shader on every
    dispatch after the uniform buffer is rebound."""
    kinds: dict[str, str] = {}  # let name -> "const" | "uniform" | "varying"

    def kind(expr: str, loop_var: str | None = None) -> str:
        expr = re.sub(r"\bpodArgs\.\w+", " __uniform__ ", expr)
        expr = re.sub(r"\b\d[\w.]*", " ", expr)  # literals: 511i, 9u, 3.4e+38f
        names = set(re.findall(r"[A-Za-z_]\w*", expr)) - _WGSL_PURE - {loop_var}
        ks = {"uniform" if n == "__uniform__" else kinds.get(n, "varying") for n in names}
        return "varying" if "varying" in ks else "uniform" if "uniform" in ks else "const"

    bad, scanned = [], 0
    for line in wgsl.splitlines():
        line = line.strip()
        if m := _LET.search(line):
            kinds[m.group(1)] = kind(m.group(2))
        elif m := _FOR.search(line):
            scanned += 1
            if kind(m.group(2), m.group(1)) == "uniform":
                bad.append(line)
        elif m := _IF.search(line):
            scanned += 1
            if kind(m.group(1)) == "uniform":
                bad.append(line)
    return bad, scanned


def test_uniform_only_condition_scanner():
    """The scanner itself: the loop bound the decode attention kernel used to have is caught; the
    same bound made to depend on the workgroup id (lowering's fix) is not."""
    let = "let v__1 : i32 = i32(blockIdx.x);\n"
    old = "for (var c : i32 = 0i; c < ((podArgs.total + 511i)>>9u); c++) {"
    new = "for (var c : i32 = 0i; c < max(((podArgs.total + 511i)>>9u), (0i - v__1)); c++) {"
    assert _uniform_only_conditions(let + old) == ([old], 1)
    assert _uniform_only_conditions(let + new) == ([], 1)
    assert _uniform_only_conditions("let n : i32 = (podArgs.seq * 4i);\nif ((n > 1i)) {")[0]
    assert not _uniform_only_conditions("if ((i32(threadIdx.x) < podArgs.total)) {")[0]


@pytest.mark.parametrize("wdtype", ["float32", "float16"])
def test_no_loop_bound_from_uniforms_alone(compiled, wdtype):
    """No emitted kernel (every schedule variant, prefill and decode) has a loop trip count or branch
    condition computed from uniforms alone: lavapipe would recompile it on every dispatch
    (``lowering.kernels.common.opaque_loop_extents``)."""
    module = load_compiled(compiled("tiny-gqa4", "f32", wdtype, max_context=704, prefill_chunk=64))
    scanned, found = 0, {}
    for name, wgsl in module.wgsl.items():
        bad, n = _uniform_only_conditions(wgsl)
        scanned += n
        if bad:
            found[name] = bad
    assert scanned > 20, "the scanner found almost no loops: has the WGSL format changed?"
    assert not found, f"loop bounds / conditions from uniforms alone (lavapipe recompiles these): {found}"
