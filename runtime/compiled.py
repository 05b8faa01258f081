"""Read and validate a compiled module directory (written by ``python -m frontend.compile``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError

FORMAT_VERSION = 2
TUNING_FILE = "tuning.json"


@dataclass
class CompiledModule:
    path: Path
    manifest: dict[str, Any]
    wgsl: dict[str, str]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def options(self) -> dict[str, Any]:
        return self.manifest["options"]


def load_compiled(path: str | Path) -> CompiledModule:
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise UserError(f"{path}: not a compiled module directory (run python -m frontend.compile MODEL_DIR first)")
    if not mf.is_file():
        raise UserError(f"{mf}: missing (not a compiled module, or an interrupted compile)")
    try:
        manifest = json.loads(mf.read_text())
        version = manifest["format_version"]
        kernels, phases = manifest["kernels"], manifest["phases"]
        for key in ("config", "options", "weights_fingerprint", "requires", "model_dir"):
            manifest[key]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{mf}: corrupt manifest ({type(e).__name__}: {e})") from None
    if version != FORMAT_VERSION:
        raise UserError(f"{mf}: format version {version}, this runtime reads version {FORMAT_VERSION}; "
                        "recompile with python -m frontend.compile")
    wgsl = {}
    for name, k in kernels.items():
        f = path / k["file"]
        if not f.is_file():
            raise UserError(f"{f}: kernel file missing from the compiled module; recompile it")
        wgsl[name] = f.read_text()
    for phase in ("prefill", "decode"):
        if phase not in phases:
            raise UserError(f"{mf}: no '{phase}' plan in the manifest")
    _apply_tuning(path / TUNING_FILE, manifest)
    return CompiledModule(path, manifest, wgsl)


def _apply_tuning(path: Path, manifest: dict[str, Any]) -> None:
    """``tuning.json`` (written by ``python -m runtime.tune``) picks, per kernel, the schedule that
    measured fastest on a device; every dispatch of that kernel then uses the chosen alternate."""
    if not path.is_file():
        return
    try:
        tuning = json.loads(path.read_text())
        choices = tuning["choices"]
        for main, alt in choices.items():
            if alt != main and alt not in manifest["kernels"][main]["alternates"]:
                raise KeyError(alt)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: corrupt or stale tuning ({type(e).__name__}: {e}); delete it or rerun "
                        "python -m runtime.tune") from None
    manifest["tuned_on"] = tuning.get("device")
    for plan in manifest["phases"].values():
        for d in plan["dispatches"]:
            d["kernel"] = choices.get(d["kernel"], d["kernel"])
