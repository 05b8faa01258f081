"""Flags shared by generate / chat / serve, so each means the same everywhere, with its default in
``--help``; and the cheap checks every command makes before it opens the GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli_help import HelpFormatter
from common.errors import UserError

__all__ = ["HelpFormatter", "add_model_args", "add_sampling_args", "check_text", "open_module", "read_prompt",
           "sampling_from_args"]


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("compiled_dir", type=Path, help="a compiled module (python -m frontend.compile MODEL_DIR -o OUT)")
    ap.add_argument("--model-dir", type=Path, help="weights and tokenizer directory (default: the one the module "
                    "was compiled from, recorded in its manifest)")
    ap.add_argument("--adapter", help="Vulkan adapter index or name substring (default: $QWEN3VK_ADAPTER, else the "
                    "first GPU, else the CPU Vulkan driver)")


def add_sampling_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("sampling (defaults: the model's generation_config.json; greedy if it has none)")
    g.add_argument("--temperature", type=float, help="0 = greedy; > 0 samples (default: generation_config's "
                   "temperature when it says do_sample, else 0)")
    g.add_argument("--top-k", type=int, help="keep the K most likely tokens, 0 = off (default: generation_config, "
                   "else 0)")
    g.add_argument("--top-p", type=float, help="keep the smallest set of tokens whose probability reaches P, in "
                   "(0, 1] (default: generation_config, else 1)")
    g.add_argument("--min-p", type=float, help="drop tokens less likely than MIN_P x the most likely one, in [0, 1] "
                   "(default: generation_config, else 0 = off)")
    g.add_argument("--repetition-penalty", type=float, help="HF's penalty on tokens already in prompt or output, "
                   "> 0, 1 = off (default: generation_config, else 1)")
    g.add_argument("--seed", type=int, help="random seed for sampling (default: none, a fresh seed each run)")


def sampling_from_args(a: argparse.Namespace, gen: dict):
    from runtime.sampling import SamplingParams

    params = SamplingParams.from_generation_config(gen, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                                   min_p=a.min_p, repetition_penalty=a.repetition_penalty,
                                                   seed=a.seed)
    params.validate()
    return params


def check_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable argv/stdin bytes arrive as lone surrogates
        raise UserError(f"{what} is not valid UTF-8 (bad byte at character {e.start}); pass UTF-8 text") from None
    return text


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """``--prompt TEXT``, ``--prompt -`` (standard input) or ``--prompt-file PATH``."""
    if prompt is not None and prompt_file is not None:
        raise UserError("pass either --prompt or --prompt-file, not both")
    if prompt is None and prompt_file is None:
        raise UserError("no prompt: pass --prompt TEXT, --prompt - (read standard input) or --prompt-file PATH")
    if prompt_file is not None:
        try:
            data = prompt_file.read_bytes()
        except OSError as e:
            raise UserError(f"--prompt-file {prompt_file}: {e.strerror}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"--prompt-file {prompt_file} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"standard input is not valid UTF-8 (bad byte at offset {e.start})") from None
    return check_text(prompt, "--prompt")


def open_module(compiled_dir: Path, model_dir: Path | None):
    """The compiled module and its model directory, without touching the GPU or the weights."""
    from runtime.compiled import load_compiled

    module = load_compiled(compiled_dir)
    return module, Path(model_dir) if model_dir else Path(module.manifest.model_dir)
