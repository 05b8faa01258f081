"""Tokenizer, chat template and stop tokens from the model directory."""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import UserError


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


def stop_ids(model_dir: Path, tokenizer=None) -> set[int]:
    """generation_config's ``eos_token_id`` (one or a list) plus Qwen's end tokens, when known."""
    ids: set[int] = set()
    eos = generation_defaults(model_dir).get("eos_token_id")
    for e in eos if isinstance(eos, list) else [eos]:
        if isinstance(e, int):
            ids.add(e)
    for s in ("<|im_end|>", "<|endoftext|>"):
        t = tokenizer.token_to_id(s) if tokenizer is not None else None
        if t is not None:
            ids.add(t)
    return ids


def chat_template(model_dir: Path) -> str:
    """The model's chat template: ``chat_template.jinja`` (newer HF layout) or tokenizer_config.json's."""
    jinja = Path(model_dir) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    path = Path(model_dir) / "tokenizer_config.json"
    template = _json(path).get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template:
        raise UserError(f"{path}: no chat_template; this model has no chat format (run without --chat)")
    return template


def render_chat(model_dir: Path, messages: list[dict], add_generation_prompt: bool = True,
                enable_thinking: bool | None = None) -> str:
    """Render ``messages`` ([{"role", "content"}]) through the model's template, in the sandboxed
    Jinja environment HF's ``apply_chat_template`` uses (so templates written for it behave the
    same). ``enable_thinking`` is passed only when set (Qwen3 templates test ``is defined``)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise UserError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    cfg = _json(Path(model_dir) / "tokenizer_config.json")
    kw: dict = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                "bos_token": cfg.get("bos_token") or "", "eos_token": cfg.get("eos_token") or ""}
    if enable_thinking is not None:
        kw["enable_thinking"] = enable_thinking
    try:
        return env.from_string(chat_template(model_dir)).render(**kw)
    except jinja2.TemplateError as e:
        raise UserError(f"chat template of {model_dir} failed: {e}") from None


def apply_chat_template(model_dir: Path, prompt: str, enable_thinking: bool | None = None,
                        system: str | None = None) -> str:
    """One user message (and an optional system message) as the model's chat prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render_chat(model_dir, messages, True, enable_thinking)
