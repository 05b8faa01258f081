"""``python -m runtime.generate COMPILED_DIR --prompt "..."``: stream generated text.

Greedy when ``--temperature 0``; defaults come from the model's generation_config.json.
``--profile`` (or PROFILE=1) prints the per-op GPU profile; ``--trace out.json`` writes a
Chrome/Perfetto trace; ``--json`` prints one JSON object instead of streaming text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from frontend.errors import UserError, cli_main


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m runtime.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compiled_dir", type=Path)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--model-dir", type=Path, help="weights/tokenizer dir (default: the one compiled from)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", default=os.environ.get("PROFILE") == "1")
    ap.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace of the profiled steps")
    ap.add_argument("--adapter", help="Vulkan adapter index or name substring")
    return ap.parse_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    try:
        a.prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # undecodable argv bytes arrive as lone surrogates
        raise UserError(f"--prompt is not valid UTF-8 (bad byte at character {e.start}); pass UTF-8 text") from None
    from runtime.api import load
    from runtime.sampling import SamplingParams
    from runtime.text import apply_chat_template, generation_defaults, stop_ids

    model = load(a.compiled_dir, a.model_dir, a.adapter, verbose=not a.json)
    gen = generation_defaults(model.model_dir)
    temperature = a.temperature if a.temperature is not None else float(gen.get("temperature", 0.0)
                                                                        if gen.get("do_sample") else 0.0)
    params = SamplingParams(temperature, a.top_k if a.top_k is not None else int(gen.get("top_k", 0)),
                            a.top_p if a.top_p is not None else float(gen.get("top_p", 1.0)), a.seed)
    params.validate()
    tok = model.tokenizer
    text = apply_chat_template(model.model_dir, a.prompt) if a.chat else a.prompt
    prompt_ids = tok.encode(text, add_special_tokens=False).ids
    if not prompt_ids:
        raise UserError("the prompt is empty (it must encode to at least one token)")
    stops = set() if a.ignore_eos else stop_ids(model.model_dir, tok)
    profile = a.profile or a.trace is not None
    out_ids: list[int] = []
    printed = ""
    interrupted = False
    try:
        for t in model.generate(prompt_ids, a.max_new_tokens, params, stops, profile):
            out_ids.append(t)
            if not a.json:
                full = tok.decode([i for i in out_ids if i not in stops])
                if not full.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    sys.stdout.write(full[len(printed):])
                    sys.stdout.flush()
                    printed = full
    except KeyboardInterrupt:
        interrupted = True
    st = model.last_stats
    text_out = tok.decode([i for i in out_ids if i not in stops])
    if a.json:
        print(json.dumps({"prompt_token_ids": prompt_ids, "token_ids": out_ids, "text": text_out,
                          "prefill_tok_s": st.prefill_tok_s, "decode_tok_s": st.decode_tok_s,
                          "interrupted": interrupted}))
    else:
        print(("\n[interrupted]" if interrupted else "") + f"\n\n[{st.prompt_tokens} prompt tokens: "
              f"{st.prefill_tok_s:.1f} tok/s prefill; {st.new_tokens} new tokens: {st.decode_tok_s:.2f} tok/s "
              f"decode on {model.device.name}]", file=sys.stderr)
    if profile and st.profiles:
        from runtime.profile import report, write_trace

        plans = model.module.manifest["phases"]
        if st.profiles[0].source != "gpu-timestamps":
            print("note: the adapter has no timestamp queries; profiling per op with CPU timing "
                  "(a synchronize after each op)", file=sys.stderr)
        for phase in ("prefill", "decode"):
            r = report(st.profiles, plans, phase)
            if r:
                print(r, file=sys.stderr)
        if a.trace:
            write_trace(a.trace, st.profiles, plans)
            print(f"wrote trace {a.trace}", file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
