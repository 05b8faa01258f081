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
from ir.graph import Node
from ir.ops import attention_split
from ir.serialize import from_json
from ir.shapes import resolve
from lowering.module import kernel_info
from lowering.plan import storage_root
from runtime.compiled import load_compiled
from runtime.constants import make_constant
from runtime.device import open_device
from runtime.launcher import KernelLauncher

_NP = {"float16": np.float16, "float32": np.float32, "int32": np.int32}
# batched_gemm and softmax are prefill attention's unfused path, elementwise (silu_mul) prefill
# SwiGLU's: tests/test_prefill_attention.py compiles a module with both (fuse_prefill_attention=False,
# fuse_prefill_swiglu=False) and runs those kernels
KCLASSES = {"gemv", "gemm", "attention", "norm", "copy", "gather", "kv_write"}


def _cases(module):
    ctx = module.manifest.options.max_context
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
                    if seq + past <= ctx:
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
    module = load_compiled(compiled("tiny-gqa4", "f32", wdtype, max_context=704, prefill_chunk=64, candidates=True))
    # every attention schedule the tuner may pick, as the module binds it (decode and prefill)
    assert check_every_kernel(module, tol, alternates=frozenset({"attention"})) == KCLASSES


def test_every_kernel_of_the_packed_qkv_path(compiled):
    """tiny-mha's q, k and v (64 columns each) take the packed prefill GEMM, which tiny-gqa4's 32-wide
    k and v do not: the packed GEMM (every schedule, split-K included), the attention reading q
    from the packed rows and the k and v cache writes reading their slices, against the reference."""
    module = load_compiled(compiled("tiny-mha", "f32", "float32", max_context=512, prefill_chunk=64, candidates=True))
    g = from_json((module.path / "graphs" / "prefill.json").read_text())
    assert [n.attrs.get("packed") for n in g.by_op("fused_gemm")].count(True) == 2  # one per layer
    assert all(n.attrs.get("packed_offset") in (64, 128) for n in g.by_op("kv_cache_write"))
    assert check_every_kernel(module, 1e-5, alternates=frozenset({"gemm"})) == KCLASSES


def check_every_kernel(module, tol: float, alternates: frozenset[str] = frozenset()) -> set[str]:
    """Run every kernel of ``module`` on random args (``_cases``) against the reference rule of
    its node; returns the kernel classes covered. For kernel classes in ``alternates``, every
    schedule compiled for ``runtime.tune`` to pick runs too (on the same args)."""
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
        if node.op == "attention_combine":  # partial states: each stat repeated over 4 values, sums > 0;
            p = arrays[0]  # the slots past the step's splits NaN: a merge must not read them
            p[..., -8:-4], p[..., -4:] = p[..., -8:-7], np.abs(p[..., -4:-3]) + 0.5
            p[:, attention_split(total, node.attrs["split_unit"], node.attrs["max_splits"])[1]:] = np.nan
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
        k_row = None
        if node.attrs.get("k_write") is not None:  # the kernel stores the new K row its kv_cache_write describes
            kw = g[g[node.inputs[1]].inputs[0]]
            k_cache = reference.evaluate(kw, [expect_inputs[storage_root(g, kw.name)], args[0], args[4]], dims)
            k_cache = k_cache.astype(tensors[storage_root(g, kw.name)].dtype).astype(np.float64)  # as stored
            args[1] = k_cache[None, :, :total, :]
            k_row = (d.args.index(storage_root(g, kw.name)), k_cache[:, total - 1])
        expected = reference.evaluate(node, args, dims)
        keys = [d.kernel] + (module.manifest.kernels[d.kernel].alternates if d.kclass in alternates else [])
        for key in keys:
            if key not in launchers:
                launchers[key] = KernelLauncher(dev.device, key, module.manifest.kernels[key], module.wgsl[key])
            outs = launchers[key](arrays, seq, total)
            got = outs[o]
            if k_row is not None:  # the stored row: rounded to the f16 cache, maybe one ulp apart
                k_got = outs[k_row[0]][:, total - 1].astype(np.float64)
                k_err = np.abs(k_got - k_row[1]).max() / np.abs(k_row[1]).max()
                assert k_err <= tol + 2.0**-10, f"{key}: the stored K row, rel err {k_err:.2e}"
            want = expected
            if node.op == "attention_partial":
                n = attention_split(total, node.attrs["split_unit"], node.attrs["max_splits"])[1]
                if node.attrs.get("combine"):  # the merged output it writes, and its counters back at zero
                    comb = g[node.attrs["combine"]]
                    merged = outs[d.args.index(storage_root(g, comb.name))]
                    want_merged = reference.evaluate(comb, [expected], dims)
                    m_err = np.abs(merged - want_merged).max() / np.abs(want_merged).max()
                    assert np.isfinite(merged).all() and m_err <= tol, f"{key}: fused combine, rel err {m_err:.2e}"
                    assert not any(outs[i].any() for i, a in enumerate(d.args) if a.startswith("const:counters")), \
                        f"{key}: the arrival counters are left at zero"
                got, want = got[:, :n], expected[:, :n]  # the slots past the step's splits are not written
            err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
            # a result stored in f16 (the KV cache) is rounded once more: half an f16 ulp, 2^-11 relative
            bound = tol + (2.0**-11 if got.dtype == np.float16 else 0)
            assert np.isfinite(got).all() and err <= bound, f"{key} ({node.name}, " \
                f"{module.manifest.kernels[key].rule}) seq={seq} total={total}: rel err {err:.2e}"
        covered.add(d.kclass)
    return covered


@pytest.mark.parametrize("wdtype", ["float32", "float16"])
def test_every_gemv_variant_against_numpy(wdtype):
    """Each schedule the tuner may pick, on shapes with row and K tails, with and without the residual;
    K=6172 runs the K loops of the ``depth`` schedules for several iterations, the last one's steps
    partly past the row's end (masked), with two rows per thread over an odd N."""
    from lowering.build import build_kernel
    from lowering.kernels import gemv
    from lowering.kernels.spec import KernelSpec

    dev = open_device()
    rng = np.random.default_rng(1)
    cases = [(389, 64, False, None, False), (64, 160, True, None, False), (3, 1028, False, None, False),
             (70, 96, False, 1e-6, False), (33, 64, False, None, True), (40, 132, True, 1e-5, True),
             (7, 6172, True, 1e-6, True)]
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
        for sched in gemv.schedule_list(wdtype):
            name = sched.name
            builder = gemv.gemv_func(n, k, wdtype, res, sched, eps, swiglu)
            spec = KernelSpec(f"t{n}x{k}", "gemv", builder, [f"x{i}" for i in range(len(args) + 1)], [len(args)],
                              variants=[(name, builder)])
            kern, _ = build_kernel(spec, "gemv_test", use_cache=False)
            assert kern.rule == name
            got = KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)(
                [*args, np.full((1, n), np.nan, np.float32)], 1, 1)[-1]
            err = np.abs(got - expected).max() / np.abs(expected).max()
            assert err < 1e-5, f"{name} {n}x{k} res={res} norm={eps} swiglu={swiglu}: rel err {err:.1e}"


ROWS = 130  # the prefill chunk of test_every_gemm_variant_against_numpy's split-K scratch


@pytest.mark.parametrize("wdtype", ["float32", "float16", "q4", "q8"])
def test_every_gemm_variant_against_numpy(wdtype):
    """Each prefill GEMM tiling the tuner may pick, for every weight format (quantized ones against
    their dequantized values), with row and column tails (seq and N not multiples of any tile; an N
    not a multiple of 4, stored value by value), K of one or several slices (odd and even counts:
    the double-buffered loop runs slices in pairs), with and without the residual; the SwiGLU
    GEMM (``silu(A W^T) * (A U^T)``, two weights; each tiling that fits it) at one such shape; and
    the packed q | k | v GEMM (``[A Wq^T | A Wk^T | A Wv^T]``, three weights of two sizes). All
    as a module builds them for a prefill chunk of ``ROWS``: the split-K tilings too (the last split
    to arrive sums the records; splits of unequal slice counts where the count does not divide
    K's slices), the arrival counters back at zero after each."""
    from lowering.build import build_kernel
    from lowering.kernels import gemm
    from lowering.kernels.spec import KernelSpec

    # what the module docstring promises: lavapipe's 32 KiB of shared memory, WebGPU's 256 threads
    assert all(t.shared_bytes <= 32 << 10 and t.threads <= 256 for t in gemm.TILINGS)
    dev = open_device()
    rng = np.random.default_rng(2)
    quant = wdtype in ("q4", "q8")
    fmt = of_dtype(wdtype)
    cases = [(200, 160, True, False, None), (130, 96, False, False, None), (96, 256, True, False, None)] + (
        [] if quant else [(64, 48, False, False, None)])
    # swiglu: N not a multiple of 4 (value stores) in f32; an odd slice count where K allows (q: K % 32)
    cases.append((200, 160, False, True, None) if quant else (130 if wdtype == "float32" else 200, 112, False, True,
                                                              None))
    cases.append((72, 256, False, True, None))  # split-K 2, 3, 4 and 8 of the SwiGLU GEMM (16 slices)
    cases.append((512, 128, False, False, (256, 128, 128)))  # packed: tiles of every segment, split-K too
    for n, k, res, swiglu, packed in cases:
        heights = packed or (n,) * (1 + swiglu)
        bufs = [encode(rng.standard_normal((m, k)).astype(np.float32), fmt) for m in heights]
        vals = [decode(b, (m, k), fmt).astype(np.float64) for b, m in zip(bufs, heights, strict=True)]
        w, u = (np.concatenate(vals) if packed else vals[0]), vals[-1]
        ws = [x for b, m in zip(bufs, heights, strict=True)
              for x in ([b, b] if quant else [b.view(_NP[wdtype]).reshape(m, k)])]
        scratch, variants = gemm.schedules(n, k, wdtype, res, swiglu, rows=ROWS, max_bytes=1 << 30, packed=packed)
        nargs = 2 + len(ws) + res + len(scratch)
        assert len(variants) >= 6
        # split-K where every split gets two 16-wide slices, uneven ones included (K = 160: 10 slices)
        assert all(k // 16 < 2 * s or any(f"split-K {s})" in name for name, _ in variants) for s in (2, 3, 4, 8))
        for name, builder in variants:
            spec = KernelSpec(f"g{n}x{k}", "gemm", builder, [f"x{i}" for i in range(nargs)], [nargs - 1],
                              variants=[(name, builder)])
            kern, _ = build_kernel(spec, "gemm_test", use_cache=False)
            assert kern.rule == name
            launch = KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)
            for seq in (1, 37, 130):
                a = rng.standard_normal((seq, k)).astype(np.float32)
                r = rng.standard_normal((seq, n)).astype(np.float32)
                expected = a.astype(np.float64) @ w.T + (r if res else 0)
                if swiglu:
                    expected = expected / (1 + np.exp(-expected)) * (a.astype(np.float64) @ u.T)
                outs = launch([a, *ws, *([r] if res else []), *map(make_constant, scratch),
                               np.full((seq, n), np.nan, np.float32)], seq, seq)
                got = outs[-1]
                assert not scratch or not outs[-2].any(), f"{name}: the arrival counters are left at zero"
                err = np.abs(got - expected).max() / np.abs(expected).max()
                assert err < 1e-5, f"{wdtype} {name} seq={seq} {n}x{k} res={res} swiglu={swiglu}: rel err {err:.1e}"


def _attention_node(op: str, group: int, hd: int, q_norm: bool, split: tuple[int, int] | None):
    attrs = {"scale": hd ** -0.5, "causal": True, "gqa_group": group}
    if q_norm:
        attrs.update(q_norm_eps=1e-6, rope="default(theta=1000000.0)")
    if split:
        attrs.update(split_unit=split[0], max_splits=split[1])
    return Node("attn", op, [], (), "float32", attrs)


@pytest.mark.parametrize("nh,nkv,hd,kv_dtype,q_norm", [(4, 4, 16, "float32", False), (4, 2, 16, "float16", True),
                                                        (8, 2, 16, "float16", False), (16, 8, 128, "float16", True),
                                                        (40, 8, 128, "float16", True)])
def test_split_attention_against_numpy(nh, nkv, hd, kv_dtype, q_norm):
    """Flash-decoding decode attention, every schedule: each split's partial state and the merged
    output against numpy, at totals of one split, of many (up to 12), past a multiple of the chunk
    and with chunks of several tiles (unit 16 x at most 4 splits: 176-position chunks at 700);
    GQA groups 1, 2, 4 and 5 (one workgroup serves the whole group; at group 5 a merge has more
    (head, lane) pairs than threads), f16 and f32 caches, with and without the q RMSNorm + RoPE
    prologue. The merge fused into the partial kernel for every schedule. The unsplit kernel (one
    workgroup per kv head over the whole cache, normalized in place) on the same inputs."""
    from lowering.build import build_kernel
    from lowering.kernels import attention
    from lowering.kernels.elementwise import rope_tables
    from lowering.kernels.spec import KernelSpec

    dev = open_device()
    rng = np.random.default_rng(2)
    ctx, group = 704, nh // nkv
    consts = [make_constant(c) for c in rope_tables("default(theta=1000000.0)", hd, ctx)] if q_norm else []

    def launcher(name, builder, nargs):
        spec = KernelSpec(name, "attention", builder, [f"x{i}" for i in range(nargs)], [nargs - 1],
                          variants=[(name, builder)])
        kern, _ = build_kernel(spec, name, use_cache=False)
        assert not _uniform_only_conditions(kern.wgsl)[0], f"{name}: a loop bound or branch on uniforms alone"
        return KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)

    nin = 3 + 3 * q_norm
    qn = (1e-6, "float32") if q_norm else None
    # every schedule with short chunks; the compiler's default split with the default schedule
    cuts = [((16, 4), tp) for tp in attention.SPLIT_VARIANTS] + [((64, 32), attention.SPLIT_VARIANTS[0])]
    schedules = [(f"split_{s[0]}_{s[1]}_{t}x{p}", lambda t=t, p=p, s=s: attention._attention_func(
        nh, nkv, hd, ctx, hd ** -0.5, kv_dtype, t, p, qn, s), s, False) for s, (t, p) in cuts]
    schedules.append(("whole", lambda: attention._attention_func(nh, nkv, hd, ctx, hd ** -0.5, kv_dtype,
                                                                 *attention.WHOLE_VARIANTS[0], qn, None), None, False))
    # the merge fused into the partial kernel (the last workgroup per kv head), short and default splits
    schedules += [(f"fused_{s[0]}_{s[1]}_{t}x{p}", lambda t=t, p=p, s=s: attention._attention_func(
        nh, nkv, hd, ctx, hd ** -0.5, kv_dtype, t, p, qn, s, combine=True), s, True) for s, (t, p) in cuts]
    for name, builder, split, fused in schedules:
        run = launcher(name, builder, nin + 1 + 2 * fused)
        merge = split and not fused and launcher(f"combine_{split[0]}_{split[1]}",
                                                 lambda s=split: attention._combine_func(nh, hd, *s), 2)
        for total in (1, 5, 16, 17, 64, 65, 200, 700):
            q = rng.standard_normal((1, nh, hd) if q_norm else (1, nh, 1, hd)).astype(np.float32)
            k, v = (rng.standard_normal((nkv, ctx, hd)).astype(kv_dtype) for _ in range(2))
            ins = [q, k, v] + ([rng.standard_normal(hd).astype(np.float32), *consts] if q_norm else [])
            args = [q, k[None, :, :total], v[None, :, :total]] + ins[3:4]
            args = [a.astype(np.float64) for a in args]
            dims = {"seq": 1, "total": total}
            want = reference.evaluate(_attention_node("attention", group, hd, q_norm, None), args, dims)
            if split is None:
                got = run([*ins, np.full((1, nh, 1, hd), np.nan, np.float32)], 1, total)[-1]
            elif fused:  # records start as NaN: the merge must not read the slots past the step's splits
                *_, part, counters, got = run([*ins, np.full((nh, split[1], hd + 8), np.nan, np.float32),
                                               np.zeros(nkv, np.int32), np.full((1, nh, 1, hd), np.nan, np.float32)],
                                              1, total)
                assert not counters.view(np.int32).any(), f"{name}: the arrival counters are left at zero"
            else:
                n = attention_split(total, *split)[1]
                part = run([*ins, np.full((nh, split[1], hd + 8), np.nan, np.float32)], 1, total)[-1]  # NaN: unread
                want_part = reference.evaluate(_attention_node("attention_partial", group, hd, q_norm, split), args,
                                               dims)
                err = np.abs(part[:, :n] - want_part[:, :n]).max() / np.abs(want_part[:, :n]).max()
                assert err < 1e-5, f"{name} partials nh={nh} nkv={nkv} total={total}: rel err {err:.1e}"
                got = merge([part, np.full((1, nh, 1, hd), np.nan, np.float32)], 1, total)[-1]
            err = np.abs(got - want).max() / np.abs(want).max()
            assert np.isfinite(got).all() and err < 1e-5, f"{name} nh={nh} nkv={nkv} total={total}: rel err {err:.1e}"


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
    dispatch after the uniform buffer is rebound. A loop of a constant trip count counts as
    unrolled (Mesa unrolls short ones): its variable is a constant in the branches of its body, so
    ``for (s = 0; s < 32; s++) { if (s * podArgs.total > 5) ...`` is flagged too."""
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
            bound = kind(m.group(2), m.group(1))
            if bound == "uniform":
                bad.append(line)
            kinds[m.group(1)] = "const" if bound == "const" else "varying"
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
    # a guard inside a constant-count loop: a uniform-only branch once the driver unrolls the loop
    guarded = "for (var s : i32 = 0i; s < 32i; s++) {\nif (((s * podArgs.total) < 5i)) {"
    assert _uniform_only_conditions(guarded) == (["if (((s * podArgs.total) < 5i)) {"], 2)
    assert not _uniform_only_conditions(guarded.replace("podArgs.total", "i32(threadIdx.x)"))[0]


@pytest.mark.parametrize("wdtype", ["float32", "float16"])
def test_no_loop_bound_from_uniforms_alone(compiled, wdtype):
    """No emitted kernel (every schedule variant, prefill and decode) has a loop trip count or branch
    condition computed from uniforms alone: lavapipe would recompile it on every dispatch
    (``lowering.kernels.common.opaque_loop_extents``)."""
    module = load_compiled(compiled("tiny-gqa4", "f32", wdtype, max_context=704, prefill_chunk=64, candidates=True))
    scanned, found = 0, {}
    for name, wgsl in module.wgsl.items():
        bad, n = _uniform_only_conditions(wgsl)
        scanned += n
        if bad:
            found[name] = bad
    assert scanned > 20, "the scanner found almost no loops: has the WGSL format changed?"
    assert not found, f"loop bounds / conditions from uniforms alone (lavapipe recompiles these): {found}"
