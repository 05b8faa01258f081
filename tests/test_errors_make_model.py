"""make_model: bad flags and outputs get one clear line and never a half-written model dir."""

from __future__ import annotations

from frontend import make_model as make_model_cli
from tests.cli import clean_failure, error_line, run_module


def test_existing_out(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("1")
    assert "already exists" in error_line(capsys, make_model_cli.main, [str(out), "--preset", "tiny"])
    assert [p.name for p in out.iterdir()] == ["x"]


def test_bad_shards(tmp_path, capsys):
    msg = error_line(capsys, make_model_cli.main, [str(tmp_path / "n"), "--preset", "tiny", "--shards", "0"])
    assert "--shards must be >= 1" in msg and not (tmp_path / "n").exists()


def test_unwritable_out(capsys):
    assert "cannot write there" in error_line(capsys, make_model_cli.main, ["/proc/qwen3vk/m", "--preset", "tiny"])


def test_unknown_preset_and_dtype(tmp_path):
    r = run_module("frontend.make_model", str(tmp_path / "m"), "--preset", "llama-7b", text=True)
    assert "invalid choice: 'llama-7b'" in clean_failure(r)
    r = run_module("frontend.make_model", str(tmp_path / "m"), "--preset", "tiny", "--dtype", "int8", text=True)
    assert "invalid choice: 'int8'" in clean_failure(r)
    assert not (tmp_path / "m").exists()
