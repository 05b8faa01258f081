"""Per-step launch parameters of a phase, computed with as little Python per dispatch as possible.

Decode runs hundreds of dispatches per token and Python is the bottleneck on a fast GPU, so what
does not depend on the runtime scalars (most grids, every bind group) is computed once; a step
only fills the ``seq``/``total`` cells of the POD table (vectorized) and re-evaluates the few grids
that depend on them (attention over the cache length).
"""

from __future__ import annotations

import numpy as np

from runtime.kernel import KernelProgram


class LaunchTable:
    def __init__(self, programs: list[KernelProgram], stride_words: int) -> None:
        n = len(programs)
        self.programs = programs
        self.base = np.zeros((n, stride_words), np.int32)
        self.grids: list[tuple[int, int, int]] = [(1, 1, 1)] * n
        self.dynamic: list[int] = []
        cells: dict[str, tuple[list[int], list[int]]] = {"seq": ([], []), "total": ([], [])}
        for i, p in enumerate(programs):
            for j, field in enumerate(p.pod):
                cells[field][0].append(i)
                cells[field][1].append(j)
            if p.static:
                self.grids[i], self.base[i, len(p.pod)] = p.grid(0, 0)
            else:
                self.dynamic.append(i)
        self.cells = {k: (np.asarray(r, np.intp), np.asarray(c, np.intp)) for k, (r, c) in cells.items()}

    def __call__(self, seq: int, total: int) -> tuple[list[tuple[int, int, int]], np.ndarray]:
        pods = self.base.copy()
        pods[self.cells["seq"]] = seq
        pods[self.cells["total"]] = total
        grids = list(self.grids)
        for i in self.dynamic:
            p = self.programs[i]
            grids[i], pods[i, len(p.pod)] = p.grid(seq, total)
        return grids, pods
