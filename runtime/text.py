"""Tokenizer, chat template and stop tokens from the model directory."""

from __future__ import annotations

import json
from pathlib import Path

from frontend.errors import UserError


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; generation from text needs the model's tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for corrupt files
        raise UserError(f"{path}: cannot be read as a tokenizer ({str(e).splitlines()[0][:120]})") from None


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except ValueError:
        raise UserError(f"{path}: not valid JSON") from None


def generation_defaults(model_dir: Path) -> dict:
    return _json(Path(model_dir) / "generation_config.json")


def stop_ids(model_dir: Path, tokenizer) -> set[int]:
    ids: set[int] = set()
    eos = generation_defaults(model_dir).get("eos_token_id")
    for e in eos if isinstance(eos, list) else [eos]:
        if isinstance(e, int):
            ids.add(e)
    for s in ("<|im_end|>", "<|endoftext|>"):
        t = tokenizer.token_to_id(s)
        if t is not None:
            ids.add(t)
    return ids


def apply_chat_template(model_dir: Path, prompt: str) -> str:
    import jinja2

    path = Path(model_dir) / "tokenizer_config.json"
    template = _json(path).get("chat_template")
    if not template:
        raise UserError(f"{path}: no chat_template; run without --chat")
    env = jinja2.Environment(autoescape=False)  # noqa: S701 - renders a prompt, not HTML
    return env.from_string(template).render(messages=[{"role": "user", "content": prompt}],
                                            add_generation_prompt=True)
