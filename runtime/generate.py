"""``python -m runtime.generate COMPILED_DIR --prompt "..."``: stream generated text.

Defaults come from the model, as in the Python API (``model.generate``): sampling settings from
its generation_config.json (greedy with ``--temperature 0``), and generation ends at an
end-of-sequence token (``--ignore-eos`` to go on), a ``--stop`` string (kept in the output, as HF
does), or after ``--max-new-tokens``.
``--profile`` (or PROFILE=1) prints the per-op GPU profile; ``--trace out.json`` writes a
Chrome/Perfetto trace; ``--json`` prints one JSON object (text, token ids, finish_reason, the
sampling settings used, speeds) instead of streaming text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common.errors import UserError, cli_main
from runtime.cli_args import (
    HelpFormatter,
    add_model_args,
    add_sampling_args,
    open_module,
    read_prompt,
    sampling_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.generate", description=__doc__,
                                 formatter_class=HelpFormatter)
    add_model_args(ap)
    ap.add_argument("--prompt", help="the prompt text; '-' reads it from standard input (no default: "
                    "pass --prompt or --prompt-file)")
    ap.add_argument("--prompt-file", type=Path, help="read the prompt from this UTF-8 file instead (default: none)")
    ap.add_argument("--max-new-tokens", type=int, help="most tokens to generate (default: generation_config's "
                    "max_new_tokens, else 32)")
    add_sampling_args(ap)
    ap.add_argument("--stop", action="append", default=[], metavar="TEXT",
                    help="stop once the output contains TEXT (repeatable; default: none)")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--system", help="system message for --chat (default: none)")
    ap.add_argument("--thinking", choices=["on", "off"], help="Qwen3 thinking for --chat: off pre-fills an empty "
                    "<think> block (default: the template's own, on for Qwen3)")
    ap.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    ap.add_argument("--profile", action="store_true", default=os.environ.get("PROFILE") == "1",
                    help="print the per-op GPU profile (default: on when PROFILE=1)")
    ap.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace of the profiled steps to this file "
                    "(default: none)")
    return ap


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # everything cheap first: flags, prompt, tokenizer, context; weights go to the GPU last
    prompt = read_prompt(a.prompt, a.prompt_file)
    if a.system is not None and not a.chat:
        raise UserError("--system needs --chat")
    from runtime.api import DEFAULT_MAX_NEW_TOKENS, Model
    from runtime.text import apply_chat_template, generation_defaults, load_tokenizer, stop_ids

    module, model_dir = open_module(a.compiled_dir, a.model_dir)
    gen = generation_defaults(model_dir)
    params = sampling_from_args(a, gen)
    max_new = a.max_new_tokens if a.max_new_tokens is not None else int(gen.get("max_new_tokens")
                                                                         or DEFAULT_MAX_NEW_TOKENS)
    tok = load_tokenizer(model_dir)
    thinking = None if a.thinking is None else a.thinking == "on"
    text = apply_chat_template(model_dir, prompt, thinking, a.system) if a.chat else prompt
    prompt_ids = tok.encode(text, add_special_tokens=False).ids
    if not prompt_ids:
        raise UserError("the prompt is empty (it must encode to at least one token)")
    ctx = module.manifest.options.max_context
    if max_new < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new}")
    if len(prompt_ids) + max_new > ctx:
        raise UserError(f"prompt ({len(prompt_ids)} tokens) + max new tokens ({max_new}) = "
                        f"{len(prompt_ids) + max_new} exceeds the compiled context of {ctx} tokens (recompile "
                        "with a larger --max-context)")
    stops = set() if a.ignore_eos else stop_ids(model_dir, tok)

    model = Model(module, model_dir, a.adapter, verbose=not a.json)
    model._tokenizer = tok
    profile = a.profile or a.trace is not None
    on_prefill = _prefill_progress(len(prompt_ids), model.executor.chunk) if not a.json else None
    out_ids: list[int] = []
    interrupted = False
    from runtime.stops import IncrementalDecoder

    detok = IncrementalDecoder(tok, stops)
    try:
        for t in model.generate(prompt_ids, max_new, params, stops, profile, stop_strings=a.stop,
                                on_prefill=on_prefill):
            out_ids.append(t)
            delta = detok.push(t)
            if delta and not a.json:
                sys.stdout.write(delta)
                sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
    st = model.last_stats
    tail = detok.flush()
    if tail and not a.json:
        sys.stdout.write(tail)
    finish = "interrupted" if interrupted else st.finish_reason
    if a.json:
        print(json.dumps({"prompt_token_ids": prompt_ids, "token_ids": out_ids, "text": detok.text,
                          "finish_reason": finish, "stop": st.stop, "sampling": params.as_dict(),
                          "max_new_tokens": max_new, "ignore_eos": a.ignore_eos, "stop_strings": a.stop,
                          "prompt_tokens": len(prompt_ids), "new_tokens": len(out_ids),
                          "prefill_tok_s": st.prefill_tok_s, "decode_tok_s": st.decode_tok_s,
                          "interrupted": interrupted}))
    else:
        print(("\n[interrupted]" if interrupted else "") + f"\n\n[{st.prompt_tokens} prompt tokens: "
              f"{st.prefill_tok_s:.1f} tok/s prefill; {st.new_tokens} new tokens: {st.decode_tok_s:.2f} tok/s "
              f"decode on {model.device.name}; finish: {finish}]", file=sys.stderr)
    if profile and st.profiles:
        _print_profile(model, st.profiles, a.trace)
    return 130 if interrupted else 0


def _prefill_progress(n_prompt: int, chunk: int):
    """A progress bar for prompts of several prefill chunks, on a terminal only."""
    if n_prompt <= chunk or not sys.stderr.isatty():
        return None
    from common.progress import Progress

    bar = Progress("prefill (tokens)", n_prompt)

    def update(done: int, total: int) -> None:
        bar.total = max(total, 1)
        bar.step(done - bar.n)
        if done >= total:
            bar.done()

    return update


def _print_profile(model, profiles, trace: Path | None) -> None:
    from runtime.profile import report, write_trace

    plans = model.module.manifest.phases
    if profiles[0].source != "gpu-timestamps":
        print("note: the adapter has no timestamp queries; profiling per op with CPU timing "
              "(a synchronize after each op)", file=sys.stderr)
    for phase in ("prefill", "decode"):
        r = report(profiles, plans, phase)
        if r:
            print(r, file=sys.stderr)
    if trace:
        write_trace(trace, profiles, plans)
        print(f"wrote trace {trace}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
