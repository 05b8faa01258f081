"""Bad input gets one clear line naming the file/field, exit code 2, no traceback, no partial output."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest

from frontend import compile as compile_cli
from frontend import make_model as make_model_cli
from runtime import generate as generate_cli


def _err(capsys, main, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


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
    msg = _err(capsys, compile_cli.main, [str(tiny_copy), "-o", str(out)])
    assert expected in msg
    assert not out.exists() and not list(tmp_path.glob(".out.vkmod.tmp-*"))


def test_compile_flags(model_dir, tmp_path, capsys):
    d = str(model_dir("tiny", "f32"))
    assert "expected f16 or f32" in _err(capsys, compile_cli.main, [d, "--weight-dtype", "int4"])
    assert "exceeds max_position_embeddings" in _err(capsys, compile_cli.main, [d, "--max-context", "100000"])
    assert "positive" in _err(capsys, compile_cli.main, [d, "--max-context", "0"])
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("old")
    assert "already exists (pass --force" in _err(capsys, compile_cli.main, [d, "-o", str(out)])
    assert (out / "keep").read_text() == "old"


def test_make_model_errors(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("1")
    assert "already exists" in _err(capsys, make_model_cli.main, [str(out), "--preset", "tiny"])
    assert "--shards must be >= 1" in _err(capsys, make_model_cli.main, [str(tmp_path / "n"), "--preset", "tiny",
                                                                         "--shards", "0"])


def test_generate_errors(compiled, model_dir, tmp_path, capsys):
    mod = compiled("tiny", "f32", "float32")
    assert "manifest.json: missing" in _err(capsys, generate_cli.main, [str(tmp_path), "--prompt", "x"])
    assert "must be >= 0" in _err(capsys, generate_cli.main, [str(mod), "--prompt", "x", "--temperature", "-1"])
    assert "top-p must be in (0, 1]" in _err(capsys, generate_cli.main, [str(mod), "--prompt", "x", "--top-p", "0"])
    assert "exceeds the compiled context of 128" in _err(capsys, generate_cli.main,
                                                         [str(mod), "--prompt", "x", "--max-new-tokens", "500"])
    other = model_dir("tiny", "f32", seed=1)
    assert "weights changed since" in _err(capsys, generate_cli.main,
                                           [str(mod), "--prompt", "x", "--model-dir", str(other)])


def test_no_traceback_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "frontend.compile", str(tmp_path / "nope")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_generate_cli_end_to_end(compiled, capsys):
    mod = compiled("tiny", "f32", "float32")
    assert generate_cli.main([str(mod), "--prompt", "ab", "--max-new-tokens", "5", "--temperature", "0",
                              "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_token_ids"] and 1 <= len(out["token_ids"]) <= 5 and isinstance(out["text"], str)
