"""Read and validate a compiled module directory (written by ``python -m frontend.compile``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.manifest import Manifest, load_manifest

TUNING_FILE = "tuning.json"


@dataclass
class CompiledModule:
    path: Path
    manifest: Manifest
    wgsl: dict[str, str]


def load_compiled(path: str | Path) -> CompiledModule:
    path = Path(path)
    manifest = load_manifest(path)
    wgsl = {}
    for name, k in manifest.kernels.items():
        f = path / k.file
        if not f.is_file():
            raise UserError(f"{f}: kernel file missing from the compiled module; recompile it")
        wgsl[name] = f.read_text()
    _apply_tuning(path / TUNING_FILE, manifest)
    return CompiledModule(path, manifest, wgsl)


def _apply_tuning(path: Path, manifest: Manifest) -> None:
    """``tuning.json`` (written by ``python -m runtime.tune``) picks, per kernel, the schedule that
    measured fastest on a device; every dispatch of that kernel then uses the chosen alternate."""
    if not path.is_file():
        return
    try:
        tuning = json.loads(path.read_text())
        choices = tuning["choices"]
        for main, alt in choices.items():
            if alt != main and alt not in manifest.kernels[main].alternates:
                raise KeyError(alt)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: corrupt or stale tuning ({type(e).__name__}: {e}); delete it or rerun "
                        "python -m runtime.tune") from None
    manifest.tuned_on = tuning.get("device")
    for plan in manifest.phases.values():
        for d in plan.dispatches:
            d.kernel = choices.get(d.kernel, d.kernel)
