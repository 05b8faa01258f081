"""Quantized weights (``--quantize q8|q4``, ``common.weight_format``).

Packing bit for bit (and the GPU's dequantization bit for bit, through the embedding gather);
every GEMV schedule and every kernel of quantized modules against numpy on the dequantized
weights; end to end against HF run on the same dequantized weights (tight), and the gap to the
original weights as a number (printed, not asserted: it is what quantization costs); bad input
(a K the group size does not divide; a truncated, corrupt or stale packed-weight cache; an
interrupted quantization) and the dump's weight formats and bytes per token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.weight_format import FORMATS, GROUP, decode, dequantize, encode, of_dtype, pack, quantize, unpack
from frontend.checkpoint import WeightStore
from lowering.kernels import gemv
from lowering.module import compile_model
from lowering.options import LowerOptions
from runtime import load, weight_cache
from runtime.compiled import load_compiled
from runtime.sampling import SamplingParams
from tests.hf_oracle import HFOracle, assert_steps_match_hf
from tests.test_kernels import KCLASSES, check_every_kernel

QUANT = ["q4", "q8"]


@pytest.fixture(scope="module")
def qmodule(model_dir, tmp_path_factory):
    """``qmodule(preset, fmt, keep_lm_head=False, max_binding_bytes=128 MiB)`` -> compiled dir
    (f32 weights and KV cache besides the quantized ones, so HF comparisons can be tight)."""
    made: dict[tuple, Path] = {}

    def get(preset: str, fmt: str, keep_lm_head: bool = False, max_binding_bytes: int = 128 << 20,
            max_context: int = 128, prefill_chunk: int = 32, candidates: bool = False) -> Path:
        key = (preset, fmt, keep_lm_head, max_binding_bytes, max_context, prefill_chunk, candidates)
        if key not in made:
            out = tmp_path_factory.mktemp("qmod") / f"{preset}.{fmt}"
            opts = LowerOptions("float32", max_context, prefill_chunk, max_binding_bytes, kv_dtype="float32",
                                quantize=fmt, keep_lm_head=keep_lm_head, tuning_candidates=candidates)
            compile_model(model_dir(preset, "f32"), out, opts, log=lambda *_: None)
            made[key] = out
        return made[key]

    return get


def _weights(rng, n: int, k: int) -> np.ndarray:
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[0] = 0  # an all-zero row: scale floor, codes at the zero point
    w[1] *= 1e-7  # below the f16 scale floor
    w[2, :GROUP] = np.arange(GROUP) - 16  # integers, exact halves after scaling
    return w


@pytest.mark.parametrize("fmt", QUANT)
def test_packing_is_exact_and_documented(fmt):
    f = FORMATS[fmt]
    rng = np.random.default_rng(0)
    w = _weights(rng, 70, 96)
    q, s = quantize(w, f)
    assert q.dtype == np.uint8 and q.max() <= 2 * f.qmax and s.dtype == np.float16
    assert (s.astype(np.float32) >= 2.0 ** -14).all()
    buf = encode(w, f)
    assert buf.nbytes == f.nbytes(w.shape) == 70 * 96 * f.bits // 8 + 70 * 3 * 2
    q2, s2 = unpack(buf, w.shape, f)
    assert np.array_equal(q2, q) and np.array_equal(s2.view(np.uint16), s.view(np.uint16))
    assert np.array_equal(pack(q, s, f), buf)
    deq = decode(buf, w.shape, f)
    assert np.array_equal(deq, dequantize(q, s, f))
    # the documented formula, in float64: every value within half a step of the original
    step = np.repeat(s.astype(np.float64), GROUP, axis=1)
    assert np.array_equal(deq.astype(np.float64), (q.astype(np.float64) - f.qmax) * step)
    assert (np.abs(deq - w) <= 0.5 * step * (1 + 1e-3)).all()
    assert (deq[0] == 0).all()
    # layout: row 3's first codes, little-endian in the first word of its row
    q3 = np.zeros_like(q)
    q3[3, : f.per_word] = np.arange(f.per_word)
    words = pack(q3, s, f)[: 4 * f.words(70, 96)].view("<u4").reshape(70, -1)
    assert words[3, 0] == sum(c << (f.bits * c) for c in range(f.per_word))
    assert pack(q3, s, f)[4 * f.words(70, 96):][:2].view("<f2")[0] == s[0, 0]


def test_group_must_divide_k():
    with pytest.raises(ValueError, match=r"weight: shape \[4, 48\].*multiple of the group size 32"):
        encode(np.zeros((4, 48), np.float32), FORMATS["q4"])


@pytest.mark.parametrize("fmt", QUANT)
def test_gemv_variants_against_numpy(fmt):
    """Each schedule the tuner may pick (``gemv.schedule_list``: the list the generators compile),
    with each fusion, on dequantized weights (f64 numpy); the cases with every schedule have K
    tails of every schedule's K loop (masked steps), odd and even group counts per row (q4 scale
    pairs need an even one); a K too long to stage at once runs the staged schedules' double-buffered
    chunks (an odd count: the last pair has one) with every fusion."""
    from lowering.build import build_kernel
    from lowering.kernels import gemv
    from lowering.kernels.spec import KernelSpec
    from lowering.module import kernel_info
    from runtime.device import open_device
    from runtime.launcher import KernelLauncher

    f = FORMATS[fmt]
    dev = open_device()
    rng = np.random.default_rng(1)
    # (n, k, residual, norm eps, swiglu, every schedule / "staged" ones): row tails, K tails of every tr
    cases = [(389, 64, False, None, False, False), (3, 1056, False, None, False, True),
             (64, 160, True, None, False, False), (70, 96, False, 1e-6, False, False),
             (40, 224, True, 1e-5, True, True), (130, 2080, False, 1e-6, False, True),
             (37, 1984, True, None, True, True), (7, 6176, True, 1e-6, True, "staged")]
    for n, k, res, eps, swiglu, every in cases:
        a = rng.standard_normal((1, k)).astype(np.float32)
        w, u = encode(_weights(rng, n, k), f), encode(_weights(rng, n, k), f)
        wd, ud = (decode(b, (n, k), f).astype(np.float64) for b in (w, u))
        gw = rng.standard_normal(k).astype(np.float16)
        r = rng.standard_normal((1, n)).astype(np.float32)
        x = a.astype(np.float64)
        if eps is not None:
            x = x / np.sqrt(np.mean(x * x) + eps) * gw
        expected = x @ wd.T
        if swiglu:
            expected = expected / (1 + np.exp(-expected)) * (x @ ud.T)
        expected = expected + (r if res else 0)
        args = [a, w, w, *([u, u] if swiglu else []), *([gw] if eps is not None else []), *([r] if res else [])]
        scheds = gemv.schedule_list(fmt)
        for sched in [s for s in scheds if s.stage] if every == "staged" else scheds if every else scheds[:1]:
            name = sched.name
            builder = gemv.gemv_func(n, k, fmt, res, sched, eps, swiglu)
            spec = KernelSpec(f"q{n}x{k}", "gemv", builder, [f"x{i}" for i in range(len(args) + 1)], [len(args)],
                              variants=[(name, builder)])
            kern, _ = build_kernel(spec, "gemv_test", use_cache=False)
            assert kern.rule == name  # this schedule built, not a fallback
            got = KernelLauncher(dev.device, name, kernel_info(kern), kern.wgsl)(
                [*args, np.full((1, n), np.nan, np.float32)], 1, 1)[-1]
            err = np.abs(got - expected).max() / np.abs(expected).max()
            assert err < 1e-5, f"{fmt} {name} {n}x{k} res={res} norm={eps} swiglu={swiglu}: rel err {err:.1e}"


@pytest.mark.parametrize("fmt", QUANT)
def test_every_kernel_of_a_quantized_module(qmodule, fmt):
    """Every kernel (GEMV fusions with every GEMV schedule, prefill GEMM, the gather, with tables
    split into row chunks of 12 KiB) against the reference rule on the dequantized weights; and
    the gather, which only dequantizes, bit for bit."""
    module = load_compiled(qmodule("tiny", fmt, max_binding_bytes=12 << 10, max_context=704, prefill_chunk=64,
                                   candidates=True))
    embed = [w for w in module.manifest.weights if w.param == "model.embed_tokens.weight"]
    assert len(embed) >= 2 and all(w.format == fmt and w.nbytes <= 12 << 10 for w in embed)
    # every GEMV schedule built (none dropped for failing to build) and run: the fused QKV (v rows
    # into the cache) and K-write GEMVs exist only in a module
    assert all(len(module.manifest.kernels[d.kernel].alternates) == len(gemv.QUANT_SCHEDULES) - 1
               for d in module.manifest.phases["decode"].dispatches if d.kclass == "gemv")
    assert check_every_kernel(module, 1e-5, alternates=frozenset({"gemv"})) == KCLASSES
    _gather_is_bit_exact(module)


def _gather_is_bit_exact(module):
    from runtime.device import open_device
    from runtime.launcher import KernelLauncher

    plan = module.manifest.phases["prefill"]
    d = next(d for d in plan.dispatches if d.op == "embedding")
    rng = np.random.default_rng(5)
    tables, arrays = [], [rng.integers(0, module.manifest.model.vocab_size, 64).astype(np.int32)]
    for a in dict.fromkeys(d.args[1:-1]):
        t = plan.tensors[a]
        f = of_dtype(t.dtype)
        buf = encode(rng.standard_normal(t.shape).astype(np.float32), f)
        tables.append(decode(buf, t.shape, f))
        arrays += [buf, buf]
    out = np.full((64, tables[0].shape[1]), np.nan, np.float32)
    got = KernelLauncher(open_device().device, d.kernel, module.manifest.kernels[d.kernel],
                         module.wgsl[d.kernel])([*arrays, out], 64, 64)[-1]
    assert np.array_equal(got, np.concatenate(tables)[arrays[0]])


def _hf_on_stored_weights(model) -> HFOracle:
    """HF with every parameter replaced by what the GPU holds (quantized ones dequantized)."""
    hf = HFOracle(model.model_dir)
    formats = {w.param: FORMATS[w.format] for w in model.module.manifest.weights}
    with torch.no_grad():
        for name, p in hf.model.named_parameters():
            f = formats[name]
            if f.quantized:
                p.copy_(torch.from_numpy(decode(encode(p.numpy(), f), p.shape, f)))
    return hf


@pytest.mark.parametrize("preset,fmt,keep", [("tiny", "q4", False), ("tiny-mha", "q8", False),
                                             ("tiny-mha", "q4", True)])
def test_logits_match_hf_on_dequantized_weights(qmodule, preset, fmt, keep):
    """Tied (tiny) and untied (tiny-mha) lm_heads, quantized or kept: as tight as the f32 build."""
    model = load(qmodule(preset, fmt, keep_lm_head=keep))
    mf = model.module.manifest
    lm_param = "model.embed_tokens.weight" if mf.config["tie_word_embeddings"] else "lm_head.weight"
    assert {w.format for w in mf.weights if w.param == lm_param} == {"f32" if keep else fmt}
    hf = _hf_on_stored_weights(model)
    for plen in (1, 17, 40):  # 40 > prefill_chunk (32): two prefill steps
        prompt = [int(x) for x in np.random.default_rng(plen).integers(0, model.config.vocab_size, plen)]
        assert_steps_match_hf(model, hf, prompt, 8 if plen == 17 else 2, 1e-4)


def _nll(logits: np.ndarray, token: int) -> float:
    z = logits.astype(np.float64)
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[token])


def test_gap_to_original_weights_reported(qmodule, record_property):
    """Perplexity of a fixed token stream (the original model's greedy continuation of a fixed
    prompt) under the original weights (HF, f32) and under each quantized build on the GPU,
    teacher-forced step by step. Printed at the end of the run (``report`` in conftest.py): what
    quantization costs on this (random-weight) model."""
    stream = None
    lines = []
    for fmt in QUANT:
        model = load(qmodule("tiny", fmt))
        hf = HFOracle(model.model_dir)
        if stream is None:
            prompt = [int(x) for x in np.random.default_rng(11).integers(0, model.config.vocab_size, 8)]
            stream = prompt + hf.greedy(prompt, 56)
        ex = model.executor
        logits, _ = ex.step("prefill", np.asarray(stream[:1], np.int32), 1)
        ref = hf.prefill(stream[:1])[-1]
        ours_nll, ref_nll, agree = [], [], 0
        for t in range(1, len(stream)):
            ours_nll.append(_nll(logits, stream[t]))
            ref_nll.append(_nll(ref, stream[t]))
            agree += int(logits.argmax() == ref.argmax())
            logits, _ = ex.step("decode", np.asarray([stream[t]], np.int32), t + 1)
            ref = hf.step(stream[t])
        ppl, ppl0 = np.exp(np.mean(ours_nll)), np.exp(np.mean(ref_nll))
        assert np.isfinite(ppl)
        lines.append(f"{fmt}: perplexity {ppl:.3f} vs {ppl0:.3f} with the original weights "
                     f"({100 * (ppl / ppl0 - 1):+.2f}%), top-1 agreement {agree}/{len(stream) - 1} on a "
                     f"{len(stream)}-token stream (tiny preset)")
    record_property("report", "\n".join(lines))


def test_unquantizable_k_is_refused_naming_the_weight(model_dir, tmp_path):
    opts = LowerOptions("float16", 64, 16, quantize="q4")
    with pytest.raises(UserError, match=r"--quantize q4: model\.embed_tokens\.weight: shape \[509, 48\] cannot be "
                                        r"stored as q4: .* multiple of the group size 32"):
        compile_model(model_dir("tiny-gqa4", "f32"), tmp_path / "out", opts, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_cli_flags(model_dir, tmp_path, capsys):
    from frontend.compile import main

    assert main([str(model_dir("tiny")), "-o", str(tmp_path / "a"), "--keep-lm-head"]) == 2
    assert "--keep-lm-head only applies with --quantize" in capsys.readouterr().err
    assert main([str(model_dir("tiny")), "-o", str(tmp_path / "b"), "--quantize", "q3"]) == 2
    assert "error: --quantize 'q3' is not supported (expected none, q8 or q4)" in capsys.readouterr().err


def _cache_setup(qmodule, tmp_path):
    """A private copy of a q4 module, its quantized specs, fingerprint and the checkpoint source."""
    mod = tmp_path / "mod"
    shutil.copytree(qmodule("tiny", "q4"), mod, ignore=shutil.ignore_patterns("weights.*"))
    mf = load_compiled(mod).manifest
    specs = [w for w in mf.weights if FORMATS[w.format].quantized]
    store = WeightStore(mf.model_dir, {w.param: w.shape for w in mf.weights})

    def source(w):
        arr = store.get(w.param)
        return arr[w.rows[0]:w.rows[1]] if w.rows else arr

    return mod, specs, mf.weights_fingerprint, source


def _load(mod, specs, fp, source, capfd) -> tuple[dict, str]:
    packed = weight_cache.load(mod, specs, fp, source)
    return {k: np.array(v) for k, v in packed.items()}, capfd.readouterr().err


def test_cache_is_reused_and_rebuilt_when_bad(qmodule, tmp_path, capfd, monkeypatch):
    mod, specs, fp, source = _cache_setup(qmodule, tmp_path)
    path = weight_cache.cache_path(mod, "q4")
    good, err = _load(mod, specs, fp, source, capfd)
    assert "quantizing weights to q4" in err and path.is_file() and "note" not in err
    assert all(np.array_equal(good[w.key], encode(source(w), FORMATS["q4"])) for w in specs)
    again, err = _load(mod, specs, fp, source, capfd)  # the second load only reads
    assert err == "" and all(np.array_equal(again[k], good[k]) for k in good)
    raw = path.read_bytes()
    hlen = int.from_bytes(raw[8:16], "little")
    header = json.loads(raw[16:16 + hlen])

    def rewritten(**changes) -> bytes:
        new = json.dumps({**header, **changes}).encode()
        return raw[:8] + len(new).to_bytes(8, "little") + new + raw[16 + hlen:]

    flipped = bytearray(raw)
    flipped[-5] ^= 0x40
    cases = [(raw[: len(raw) // 2], "truncated"), (bytes(flipped), "corrupt (checksum mismatch in"),
             (raw[:16] + b"{not json" + raw[25:], "corrupt header"),
             (b"garbage!" + raw[8:], "corrupt (not a weight cache"),
             (rewritten(weights_fingerprint="0" * 32), "stale (the model's weights changed"),
             (rewritten(version=0), "stale (written by cache version 0"),
             (rewritten(entries=header["entries"][1:]), "stale (written for other weights")]
    for bad, reason in cases:
        path.write_bytes(bad)
        packed, err = _load(mod, specs, fp, source, capfd)
        assert f"{path}: {reason}" in err and "rebuilding it" in err, (reason, err)
        assert all(np.array_equal(packed[k], good[k]) for k in good)
        assert path.read_bytes() == raw
    monkeypatch.setattr(weight_cache, "LAYOUT_VERSION", 99)  # the packing changed: cached bytes are stale
    _, err = _load(mod, specs, fp, source, capfd)
    assert "stale (written by cache version 1, packing 1" in err


def test_interrupted_quantization_leaves_no_cache(qmodule, tmp_path, capfd, monkeypatch):
    mod, specs, fp, source = _cache_setup(qmodule, tmp_path)
    calls = []

    def interrupted(w, fmt):
        calls.append(w)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(w, fmt)

    monkeypatch.setattr(weight_cache, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        weight_cache.load(mod, specs, fp, source)
    assert not [p for p in mod.iterdir() if p.name.startswith((".weights", "weights"))]
    monkeypatch.setattr(weight_cache, "encode", encode)
    packed, err = _load(mod, specs, fp, source, capfd)
    assert "quantizing" in err and len(packed) == len(specs)
    # an unwritable module directory: quantized in memory, and said
    monkeypatch.setattr(weight_cache.os, "access", lambda *_: False)
    weight_cache.cache_path(mod, "q4").unlink()
    packed, err = _load(mod, specs, fp, source, capfd)
    assert "cannot write the quantized-weight cache" in err and len(packed) == len(specs)


def test_runtime_uses_the_cache_and_dump_shows_formats(qmodule, tmp_path, capfd):
    from lowering.dump import dump

    mod = tmp_path / "mod"
    shutil.copytree(qmodule("tiny-mha", "q4", keep_lm_head=True), mod, ignore=shutil.ignore_patterns("weights.*"))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    first = load(mod, verbose=True)
    a = list(first.generate(prompt, 8, SamplingParams(0.0)))
    assert "quantizing weights to q4" in capfd.readouterr().err
    second = load(mod, verbose=True)
    err = capfd.readouterr().err
    assert "quantizing" not in err, err
    assert list(second.generate(prompt, 8, SamplingParams(0.0))) == a
    ex = second.executor
    assert ex.allocated["weights"] >= sum(w.nbytes for w in second.module.manifest.weights)
    kv = second.module.manifest.kv_cache
    assert ex.allocated["kv"] == 2 * kv.layers * kv.buffer_bytes
    text = dump(mod, "decode", "text")
    assert "qkv_gemv" in text and "weights q4 " in text and "weights f32 " in text and "/token" in text
    rows = json.loads(dump(mod, "decode", "json"))["nodes"]
    lm = next(r for r in rows if r["name"] == "lm_head")
    assert [w["format"] for w in lm["weights"]] == ["f32"] and lm["bytes_per_token"] > lm["weights"][0]["bytes"]
    qkv = next(r for r in rows if r["name"] == "layers.0.qkv_proj")
    assert {w["format"] for w in qkv["weights"]} == {"q4"}
    assert qkv["weights"][0]["bytes"] == FORMATS["q4"].nbytes((64, 64))
    assert "# weights read by decode kernels: f32 " in text and "q4 " in text


def test_quantized_sizes_and_splits():
    """Real 0.6B shapes: q4 bytes per the layout; the q4 embedding (87.5 MB) fits one 128 MiB
    binding where f16 needs three; a small binding limit splits the q4 table by its q4 size."""
    from frontend.config import parse_config
    from frontend.make_model import make_config
    from frontend.qwen3 import trace
    from lowering.pipeline import lower

    cfg = parse_config(make_config("qwen3-0.6b", "bf16"), Path("config.json"))
    g = lower(trace(cfg, "decode"), LowerOptions("float16", 256, 32, quantize="q4"))
    assert g["embed_tokens.weight"].dtype == "q4" and len(g["embed"].inputs) == 2
    assert g["layers.0.input_layernorm.weight"].dtype == "float16"
    assert FORMATS["q4"].nbytes((151936, 1024)) == 151936 * 1024 // 2 + 151936 * 32 * 2
    g = lower(trace(cfg, "decode"), LowerOptions("float16", 256, 32, 32 << 20, quantize="q4"))
    chunks = [g[i] for i in g["embed"].inputs[1:]]
    assert len(chunks) == 3 and all(FORMATS["q4"].nbytes(c.shape) <= 32 << 20 for c in chunks)
    g = lower(trace(cfg, "decode"), LowerOptions("float16", 256, 32, quantize="q8", keep_lm_head=True))
    assert {g[c].dtype for c in g["embed"].inputs[1:]} == {"float16"}  # tied: the embedding is kept too
    assert g["layers.0.mlp.down_proj.weight"].dtype == "q8"
