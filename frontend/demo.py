"""``python -m frontend.demo``: the whole pipeline on a built-in default, end to end.

Makes a random-weight Qwen3 (default: the real qwen3-0.6b shape) unless it exists, compiles it
(kernel cache makes a re-run fast), and generates text with the per-op GPU profile shown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common.cli_help import HelpFormatter
from common.errors import cli_main
from frontend.presets import PRESETS


@cli_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frontend.demo", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--preset", default="qwen3-0.6b", choices=list(PRESETS), help="model shape to make")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "qwen3-vk-demo",
                    help="where the model and the compiled module are kept (reused by the next run)")
    ap.add_argument("--prompt", default="The quick brown fox", help="prompt to generate from")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate")
    a = ap.parse_args(argv)

    from frontend import compile as compile_cli
    from frontend.make_model import make_model
    from runtime import generate

    model = a.workdir / a.preset
    out = a.workdir / f"{a.preset}.vkmod"
    if not (model / "config.json").is_file():
        print(f"[1/3] making a random-weight {a.preset} in {model}")
        make_model(model, a.preset, "bf16", seed=0, force=True)
    else:
        print(f"[1/3] using the random-weight {a.preset} in {model}")
    print(f"[2/3] compiling {model} -> {out}")
    rc = compile_cli.main([str(model), "-o", str(out), "--force", "--max-context", "1024"])
    if rc:
        return rc
    print(f"[3/3] generating (greedy, {a.max_new_tokens} tokens, per-op GPU profile):")
    rc = generate.main([str(out), "--prompt", a.prompt, "--max-new-tokens", str(a.max_new_tokens),
                        "--temperature", "0", "--profile"])
    print(f"\nfiles left in {a.workdir} (kept for the next run; delete the folder to free the space):\n"
          f"  model (random weights): {model}\n  compiled module:        {out}\n"
          f"next: python -m runtime.chat {out}\n      python -m runtime.serve {out}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
