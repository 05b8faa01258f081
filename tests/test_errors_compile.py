"""compile: bad model dirs, flags and outputs get one clear line (exit 2, no traceback) and leave no partial
output; an interrupted compile leaves OUT absent or the previous OUT intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest

from common.atomic import atomic_dir
from frontend import compile as compile_cli
from tests.cli import REPO, clean_failure, error_line, run_module


@pytest.fixture()
def tiny_copy(model_dir, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(model_dir("tiny", "f32"), dst)
    return dst


def _edit_config(d, **kv):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kv)
    (d / "config.json").write_text(json.dumps(cfg))


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])


CASES = {
    "missing dir": (lambda d: shutil.rmtree(d), "not a directory"),
    "missing config": (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    "config not json": (lambda d: (d / "config.json").write_text("{nope"), "not valid JSON"),
    "llama config": (lambda d: _edit_config(d, model_type="llama"), "model_type is 'llama', expected 'qwen3'"),
    "missing field": (lambda d: _edit_config(d, hidden_size=None) or _drop(d, "hidden_size"),
                      "missing required field 'hidden_size'"),
    "heads not multiple of kv": (lambda d: _edit_config(d, num_key_value_heads=3), "must be a multiple"),
    "missing tensor": (lambda d: _rewrite_header(d / "model.safetensors", lambda h: h.pop("model.norm.weight")),
                       "'model.norm.weight' is missing"),
    "wrong shape": (lambda d: _edit_config(d, intermediate_size=100), "expected [100, 64] from config.json"),
    "int8 tensor": (lambda d: _rewrite_header(d / "model.safetensors", _to_int8), "has dtype I8"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
                  "truncated"),
    "corrupt header": (lambda d: (d / "model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{{{{{{{{{{{{{{{{"),
                       "corrupt safetensors header"),
    "broken index": (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "x.st"}}'),
                     "names shard 'x.st', which is missing"),
}


def _drop(d, key):
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop(key)
    (d / "config.json").write_text(json.dumps(cfg))


def _to_int8(h):
    e = h["model.norm.weight"]
    e["dtype"] = "I8"
    e["data_offsets"] = [e["data_offsets"][0], e["data_offsets"][0] + 64]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_dir(case, tiny_copy, tmp_path, capsys):
    breaker, expected = CASES[case]
    breaker(tiny_copy)
    out = tmp_path / "out.vkmod"
    msg = error_line(capsys, compile_cli.main, [str(tiny_copy), "-o", str(out)])
    assert expected in msg
    assert not out.exists() and not list(tmp_path.glob(".out.vkmod.tmp-*"))


def test_compile_flags(model_dir, tmp_path, capsys):
    d = str(model_dir("tiny", "f32"))
    assert "expected f16 or f32" in error_line(capsys, compile_cli.main, [d, "--weight-dtype", "int4"])
    assert "exceeds max_position_embeddings" in error_line(capsys, compile_cli.main, [d, "--max-context", "100000"])
    assert "positive" in error_line(capsys, compile_cli.main, [d, "--max-context", "0"])
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("old")
    assert "already exists (pass --force" in error_line(capsys, compile_cli.main, [d, "-o", str(out)])
    assert (out / "keep").read_text() == "old"


def test_no_traceback_in_a_real_process(tmp_path):
    r = run_module("frontend.compile", str(tmp_path / "nope"), text=True)
    assert clean_failure(r).startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_negative_max_context_and_chunk(model_dir, capsys):
    d = str(model_dir("tiny", "f32"))
    assert "positive number of tokens, got -5" in error_line(capsys, compile_cli.main, [d, "--max-context", "-5"])
    assert "--prefill-chunk must be positive" in error_line(capsys, compile_cli.main, [d, "--prefill-chunk", "0"])
    assert "--attention-splits must be >= 1, got 0" in error_line(capsys, compile_cli.main,
                                                                [d, "--attention-splits", "0"])
    assert "--attention-split-unit must be >= 1" in error_line(capsys, compile_cli.main,
                                                             [d, "--attention-split-unit", "-3"])
    assert "no effect with --attention-splits 1" in error_line(capsys, compile_cli.main, [
        d, "--attention-splits", "1", "--attention-split-unit", "32"])


def test_unwritable_out(model_dir, tmp_path, capsys):
    d = str(model_dir("tiny", "f32"))
    assert "cannot write there" in error_line(capsys, compile_cli.main, [d, "-o", "/proc/qwen3vk/out"])
    f = tmp_path / "file"
    f.write_text("x")
    assert "exists and is not a directory" in error_line(capsys, compile_cli.main, [d, "-o", str(f)])
    assert f.read_text() == "x"


@pytest.mark.parametrize("content", [None, "{not a tokenizer"])
def test_tokenizer_missing_or_corrupt_still_compiles(content, tiny_copy, tmp_path, capsys):
    tok = tiny_copy / "tokenizer.json"
    tok.unlink() if content is None else tok.write_text(content)
    out = tmp_path / "out.vkmod"
    assert compile_cli.main([str(tiny_copy), "-o", str(out), "--max-context", "64", "--no-tuning-candidates"]) == 0
    assert (out / "manifest.json").is_file()


def test_atomic_dir_keeps_previous_output_on_interrupt(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, force=True) as tmp:
        (tmp / "new").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert [p.name for p in out.iterdir()] == ["old"]


@pytest.mark.parametrize("previous", [False, True])
def test_kill_int_mid_compile(previous, model_dir, tmp_path):
    """SIGINT while kernels build (a cold kernel cache keeps the process busy): exit 130, OUT absent or
    the previous OUT intact, no temporary directory left behind."""
    out = tmp_path / "out.vkmod"
    if previous:
        out.mkdir()
        (out / "manifest.json").write_text("previous")
    env = {**os.environ, "QWEN3VK_CACHE": str(tmp_path / "cold-cache"), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "frontend.compile", str(model_dir("small", "f32")), "-o", str(out),
                          "--force", "--no-cache"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "building kernels" not in seen:
        ch = p.stderr.read(1)
        assert ch, f"compile ended before building kernels: {seen}"
        seen += ch
    p.send_signal(signal.SIGINT)
    err = seen + p.stderr.read()
    assert p.wait(timeout=60) == 130, err
    assert "Traceback" not in err and "interrupted" in err
    if previous:
        assert [f.name for f in out.iterdir()] == ["manifest.json"] and (out / "manifest.json").read_text() == \
            "previous"
    else:
        assert not out.exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".out.vkmod")]
