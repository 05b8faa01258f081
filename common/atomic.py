"""Write a whole output directory or nothing: build it beside the target, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserError


def check_writable(out: Path, force: bool = False) -> None:
    """Everything ``atomic_dir(out, force)`` will need, checked now and cheaply (commands call it
    before minutes of work): ``out`` is a directory or absent, replaceable, and its parent takes
    a new directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: already exists (pass --force to replace it)")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)).rmdir()
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out``. On any error or Ctrl-C the
    temporary directory is removed and ``out`` (absent or the previous version) is untouched."""
    out = Path(out)
    check_writable(out, force)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        tmp.chmod(0o755)
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    try:
        yield tmp
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{out}: write failed ({e.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
