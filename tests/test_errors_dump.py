"""dump: bad compiled dirs and flags get one clear line; a closed pipe (``| head``) is not a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

from lowering import dump as dump_cli
from tests.cli import REPO, clean_failure, error_line, run_module


def test_missing_dir(tmp_path, capsys):
    assert "not a compiled module directory" in error_line(capsys, dump_cli.main, [str(tmp_path / "nope")])


def test_corrupt_graph(compiled, tmp_path, capsys):
    dst = tmp_path / "m.vkmod"
    shutil.copytree(compiled("tiny", "f32", "float32"), dst)
    (dst / "graphs" / "decode.json").write_text("[1, 2")
    msg = error_line(capsys, dump_cli.main, [str(dst), "--phase", "decode"])
    assert "graphs/decode.json: cannot read the lowered graph" in msg


def test_bad_phase_is_a_usage_error(compiled):
    r = run_module("lowering.dump", str(compiled("tiny", "f32", "float32")), "--phase", "train", text=True)
    assert "invalid choice: 'train'" in clean_failure(r)


def test_closed_pipe(compiled):
    """``python -m lowering.dump M | head -1``: the reader leaves early; no BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "lowering.dump", str(compiled("tiny", "f32", "float32"))],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err
