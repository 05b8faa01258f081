"""generate / compiled module / device: each bad input or missing capability is one clear line (exit 2, no
traceback); where a fallback exists (CPU-timed profiling) it is said and the run continues."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from common.errors import UserError
from common.manifest import FORMAT_VERSION, Requirements
from runtime import generate as generate_cli
from runtime.device import NO_ADAPTER_HELP, check_adapter
from runtime.sampling import SamplingParams
from tests.cli import REPO, clean_failure, error_line, run_module


@pytest.fixture()
def mod(compiled):
    return compiled("tiny", "f32", "float32")


@pytest.fixture()
def mod_copy(mod, tmp_path):
    dst = tmp_path / "copy.vkmod"
    shutil.copytree(mod, dst)
    return dst


def _gen(capsys, mod, *args: str) -> str:
    return error_line(capsys, generate_cli.main, [str(mod), "--prompt", "x", *args])


def test_bad_flags(mod, model_dir, capsys):
    assert "must be >= 0" in _gen(capsys, mod, "--temperature", "-1")
    assert "top-p must be in (0, 1]" in _gen(capsys, mod, "--top-p", "0")
    assert "top-p must be in (0, 1]" in _gen(capsys, mod, "--top-p", "1.5")
    assert "--max-new-tokens must be >= 1, got 0" in _gen(capsys, mod, "--max-new-tokens", "0")
    assert "exceeds the compiled context of 128" in _gen(capsys, mod, "--max-new-tokens", "10000000")
    other = model_dir("tiny", "f32", seed=1)
    assert "weights changed since" in _gen(capsys, mod, "--model-dir", str(other))


def test_bad_prompts(mod, capsys):
    assert "the prompt is empty" in error_line(capsys, generate_cli.main, [str(mod), "--prompt", ""])
    long = " ".join(["word"] * 200)
    msg = error_line(capsys, generate_cli.main, [str(mod), "--prompt", long, "--max-new-tokens", "1"])
    assert "exceeds the compiled context of 128 tokens" in msg


def test_non_utf8_prompt(mod):
    r = run_module("runtime.generate", str(mod).encode(), "--prompt", b"abc\xff\xfe")
    assert "--prompt is not valid UTF-8" in clean_failure(r).replace("error: ", "")


@pytest.mark.parametrize("breaker,expected", [
    (lambda d: _edit_manifest(d, format_version=99), f"format version 99, this runtime reads version {FORMAT_VERSION}"),
    (lambda d: (d / "manifest.json").write_text("{\"format_version\": 1, "), "corrupt manifest"),
    (lambda d: _edit_manifest(d, kernels=None), "corrupt manifest"),
    (lambda d: next((d / "kernels").glob("*.wgsl")).unlink(), "kernel file missing"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json: missing"),
])
def test_broken_compiled_module(breaker, expected, mod_copy, capsys):
    breaker(mod_copy)
    assert expected in _gen(capsys, mod_copy)


def _edit_manifest(d, **kv):
    m = json.loads((d / "manifest.json").read_text())
    for k, v in kv.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("content,expected", [(None, "tokenizer.json: missing"),
                                              ("{not json", "cannot be read as a tokenizer")])
def test_tokenizer_missing_or_corrupt(content, expected, model_dir, compiled, tmp_path, capsys):
    src = model_dir("tiny", "f32")
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    tok = dst / "tokenizer.json"
    tok.unlink() if content is None else tok.write_text(content)
    assert expected in _gen(capsys, compiled("tiny", "f32", "float32"), "--model-dir", str(dst))


def test_adapter_lacking_features():
    req = Requirements(["shader-f16"], {"max-storage-buffer-binding-size": 1 << 30}, [])
    with pytest.raises(UserError, match=r"lacks required feature\(s\) \['shader-f16'\]; recompile with "
                                        "--weight-dtype f32"):
        check_adapter("gpu", set(), {"max-storage-buffer-binding-size": 1 << 31}, req)
    with pytest.raises(UserError, match="limit max-storage-buffer-binding-size is 134217728, the module needs "
                                        "1073741824"):
        check_adapter("gpu", {"shader-f16"}, {"max-storage-buffer-binding-size": 1 << 27}, req)
    check_adapter("gpu", {"shader-f16"}, {"max-storage-buffer-binding-size": 1 << 30}, req)


def test_no_timestamp_queries_falls_back_to_cpu_timing(mod, monkeypatch, capsys):
    import runtime.api

    real = runtime.api.open_device

    def without_timestamps(*a, **kw):
        dev = real(*a, **kw)
        dev.has_timestamps = False
        return dev

    monkeypatch.setattr(runtime.api, "open_device", without_timestamps)
    assert generate_cli.main([str(mod), "--prompt", "ab", "--max-new-tokens", "3", "--profile",
                              "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "no timestamp queries; profiling per op with CPU timing" in err and "ops on GPU" in err


class _FailingDevice:
    """A wgpu device whose allocations fail the way a full GPU makes them fail."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def create_buffer(self, **kw):
        if kw.get("label", "").startswith("cache_"):
            raise RuntimeError("Not enough memory left.")
        return self._real.create_buffer(**kw)


@pytest.mark.parametrize("how", ["driver", "limit"])
def test_out_of_gpu_memory(how, mod, monkeypatch, capsys):
    import runtime.api

    real = runtime.api.open_device

    def small_device(*a, **kw):
        dev = real(*a, **kw)
        if how == "driver":
            dev.device = _FailingDevice(dev.device)
        else:
            dev.limits = {**dev.limits, "max-buffer-size": 4096}
        return dev

    monkeypatch.setattr(runtime.api, "open_device", small_device)
    msg = _gen(capsys, mod, "--json")
    if how == "driver":
        assert "out of GPU memory" in msg and "cache_k.0 needs 0.0 MiB" in msg and "already allocated" in msg
    else:
        assert "needs" in msg and "allows at most 0.0 MiB per buffer" in msg


def test_no_vulkan_adapter(mod):
    r = run_module("runtime.generate", str(mod), "--prompt", "x", text=True,
                   env={"VK_DRIVER_FILES": "/nonexistent/icd.json", "VK_ICD_FILENAMES": "/nonexistent/icd.json"})
    assert NO_ADAPTER_HELP in clean_failure(r)


def test_eos_at_first_step(mod):
    from runtime.api import load

    model = load(mod)
    first = next(iter(model.generate([5, 6, 7], 4, SamplingParams())))
    assert list(model.generate([5, 6, 7], 10, SamplingParams(), stop_ids={first})) == [first]
    assert model.last_stats.new_tokens == 1


def test_ctrl_c_mid_stream(compiled):
    """SIGINT while tokens stream: what was generated stays printed, exit 130, no traceback."""
    long_mod = compiled("tiny", "f32", "float32", max_context=2048)
    p = subprocess.Popen([sys.executable, "-m", "runtime.generate", str(long_mod), "--prompt", "hello",
                          "--max-new-tokens", "2000", "--temperature", "0", "--ignore-eos"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = p.stdout.read(1)
    assert first, p.stderr.read().decode()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    err = err.decode()
    assert p.returncode == 130, err
    assert "[interrupted]" in err and "Traceback" not in err
    assert len(first + out) >= 1
