"""``python -m runtime.chat COMPILED_DIR``: talk to the model in the terminal, turn after turn.

The conversation goes through the model's own chat template; the K/V cache is kept between turns,
so each turn prefills only what is new. Replies stream as they are generated, followed by a
stats line. Ctrl-C stops the current reply (the session goes on); Ctrl-D or /exit leaves.

Commands: /reset (forget the conversation), /thinking on|off (Qwen3 reasoning), /help, /exit.
End a line with \\ to continue the message on the next line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from common.errors import UserError, cli_main
from runtime.cli_args import (
    HelpFormatter,
    add_model_args,
    add_sampling_args,
    check_text,
    open_module,
    sampling_from_args,
)

PROMPT = ">>> "
MORE = "... "
COMMANDS = {
    "/reset": "forget the conversation (the system message stays)",
    "/thinking on|off": "turn Qwen3's reasoning (<think>) on or off for the next replies",
    "/help": "this list",
    "/exit": "leave (also /quit or Ctrl-D)",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.chat", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(ap)
    ap.add_argument("--system", help="system message that starts the conversation (default: none)")
    ap.add_argument("--thinking", choices=["on", "off"], help="Qwen3 reasoning: off pre-fills an empty <think> "
                    "block (default: the chat template's own, on for Qwen3)")
    ap.add_argument("--max-new-tokens", type=int, help="most tokens per reply (default: until end-of-sequence or "
                    "the context is full)")
    add_sampling_args(ap)
    ap.add_argument("--no-stats", action="store_true", help="do not print the stats line after each reply")
    return ap


class _StopFlag:
    """Ctrl-C during a reply sets this flag (checked between tokens) instead of raising: the
    reply ends cleanly at a step boundary and the GPU state stays consistent."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old = None

    def __enter__(self) -> _StopFlag:
        self.event.clear()
        self._old = signal.signal(signal.SIGINT, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._old)


def _read_message() -> str | None:
    """One user message (lines ending in a backslash continue it); None at end of input."""
    lines: list[str] = []
    prompt = PROMPT
    while True:
        line = input(prompt)
        if line.endswith("\\"):
            lines.append(line[:-1])
            prompt = MORE
            continue
        lines.append(line)
        return "\n".join(lines)


def _stats_line(r, device: str) -> str:
    st = r.stats
    reused = f", {st.cached_tokens} reused from cache" if st.cached_tokens else ""
    tokens = f"{st.new_tokens} token{'' if st.new_tokens == 1 else 's'}"
    return (f"[{tokens} at {st.decode_tok_s:.1f} tok/s; prompt {st.prompt_tokens} tokens "
            f"({st.prefilled_tokens} prefilled at {st.prefill_tok_s:.1f} tok/s{reused}); "
            f"finish: {st.finish_reason}; {device}]")


@cli_main
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.system is not None:
        check_text(a.system, "--system")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    from runtime.api import Model
    from runtime.conversation import Conversation
    from runtime.sampling import SamplingParams
    from runtime.text import generation_defaults, load_tokenizer, render_chat

    # cheap checks before the weights go to the GPU: flags, tokenizer, chat template
    module, model_dir = open_module(a.compiled_dir, a.model_dir)
    params = sampling_from_args(a, generation_defaults(model_dir))
    tok = load_tokenizer(model_dir)
    render_chat(model_dir, [{"role": "user", "content": "x"}])
    model = Model(module, model_dir, a.adapter, verbose=True)
    model._tokenizer = tok
    list(model.generate([0], 2, SamplingParams(), set()))  # warm-up: the first reply's stats show its real speed
    thinking = None if a.thinking is None else a.thinking == "on"
    conv = Conversation(model, a.system, thinking, params, a.max_new_tokens)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    print(f"chat with {model_dir.name} on {model.device.name} (context {model.max_context} tokens). "
          "Ctrl-C stops a reply; /help lists commands; Ctrl-D or /exit leaves.", file=sys.stderr)
    while True:
        try:
            msg = _read_message()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /exit leaves)", file=sys.stderr)
            continue
        try:
            with _StopFlag() as flag:  # from here until the next prompt, Ctrl-C only stops the reply
                _turn(conv, msg, flag, model.device.name, a.no_stats)
        except KeyboardInterrupt:  # pressed in the instant between reading the line and the flag
            print("\n[stopped]", file=sys.stderr)
        except _Exit:
            return 0


class _Exit(Exception):
    pass


def _turn(conv, msg: str, flag: _StopFlag, device: str, no_stats: bool) -> None:
    """One line from the user: a command, or a message to answer."""
    cmd = msg.strip()
    if not cmd:
        return
    if cmd in ("/exit", "/quit"):
        raise _Exit
    if cmd == "/help":
        print("\n".join(f"  {c:18} {d}" for c, d in COMMANDS.items()), file=sys.stderr)
        return
    if cmd == "/reset":
        conv.reset()
        print("[conversation reset]", file=sys.stderr)
        return
    if cmd.split()[0] == "/thinking":
        arg = cmd.split()[1:] or [""]
        if arg[0] not in ("on", "off"):
            print("usage: /thinking on|off", file=sys.stderr)
            return
        conv.enable_thinking = arg[0] == "on"
        print(f"[thinking {arg[0]}]", file=sys.stderr)
        return
    if cmd.startswith("/") and not cmd.startswith("//"):
        print(f"unknown command {cmd.split()[0]} (/help lists them; start a message with // to send "
              "a leading slash)", file=sys.stderr)
        return
    if cmd.startswith("//"):
        msg = msg.replace("//", "/", 1)
    try:
        reply = conv.reply(check_text(msg, "the message"), _write, flag.event.is_set)
    except UserError as e:  # a bad message or a full context ends this turn, not the session
        print(f"\nerror: {e}", file=sys.stderr)
        return
    sys.stdout.write("\n")
    sys.stdout.flush()
    if reply.stats.finish_reason == "cancelled":
        print("[stopped]", file=sys.stderr)
    if not no_stats:
        print(_stats_line(reply, device), file=sys.stderr)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
