"""A dependency-free progress line for long steps (weight writing/upload, kernel builds)."""

from __future__ import annotations

import sys
import time

_CLEAR = "\r\x1b[2K"  # back to column 0 and erase the line: a shorter line leaves no bar behind


class Progress:
    def __init__(self, label: str, total: int, stream=None) -> None:
        self.label, self.total, self.n = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._tty = getattr(self.stream, "isatty", lambda: False)()
        if not self._tty:  # logs get a start line and a line per quarter instead of a redrawn bar
            self.stream.write(f"{label}: {self.total} to do\n")
            self.stream.flush()

    def step(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if self._tty and (now - self._last > 0.1 or self.n >= self.total):
            self._last = now
            width = 30
            fill = int(width * self.n / self.total)
            self.stream.write(f"{_CLEAR}{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.n}/{self.total}")
            self.stream.flush()
        elif not self._tty and self.n < self.total and self.n * 4 // self.total > (self.n - k) * 4 // self.total:
            self.stream.write(f"{self.label}: {self.n}/{self.total}\n")
            self.stream.flush()

    def done(self) -> None:
        dt = time.perf_counter() - self.t0
        end = _CLEAR if self._tty else ""
        self.stream.write(f"{end}{self.label}: {self.n}/{self.total} done in {dt:.1f}s\n")
        self.stream.flush()
