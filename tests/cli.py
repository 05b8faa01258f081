"""Helpers for error-path tests: run an entry point and get its one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def error_line(capsys, main, argv: list[str]) -> str:
    """Run ``main(argv)`` in-process; assert exit code 2 and a single clean ``error:`` line."""
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def run_module(module: str, *args: str | bytes, env: dict[str, str] | None = None,
               **kw) -> subprocess.CompletedProcess:
    """``python -m module args`` in a real process (for signals, argv bytes, env)."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, **kw)


def clean_failure(r: subprocess.CompletedProcess, rc: int = 2) -> str:
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == rc, err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]
