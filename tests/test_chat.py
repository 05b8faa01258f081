"""``python -m runtime.chat`` through a real pseudo-terminal (pexpect), and the conversation logic
under it: the K/V of earlier turns is reused and gives the same tokens as prefilling everything."""

from __future__ import annotations

import sys
import time

import pexpect
import pytest

from runtime.sampling import SamplingParams
from tests.cli import REPO

STATS = (r"\[\d+ tokens? at [\d.]+ tok/s; prompt (\d+) tokens \((\d+) prefilled at [\d.]+ tok/s"
         r"(, (\d+) reused from cache)?\)")


@pytest.fixture(scope="module")
def mod(compiled):
    return compiled("tiny", "f32", "float32", max_context=2048)


def _spawn(mod, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "runtime.chat", str(mod), *args], cwd=str(REPO), encoding="utf-8",
                          timeout=60, dimensions=(40, 200))
    child.expect(">>> ")
    return child


def test_chat_session_in_a_terminal(mod):
    c = _spawn(mod, "--temperature", "0", "--max-new-tokens", "5", "--system", "You are terse.")
    c.sendline("hello")
    c.expect(STATS)
    first_prompt = int(c.match.group(1))
    assert c.match.group(3) is None  # nothing to reuse on the first turn
    c.expect(">>> ")
    c.sendline("and now?")
    c.expect(STATS)
    prompt, prefilled, reused = int(c.match.group(1)), int(c.match.group(2)), int(c.match.group(4))
    assert prompt > first_prompt and reused >= first_prompt - 1 and prefilled == prompt - reused
    c.expect(">>> ")
    c.sendline("/thinking off")
    c.expect(r"\[thinking off\]")
    c.expect(">>> ")
    c.sendline("/bogus")
    c.expect("unknown command /bogus")
    c.expect(">>> ")
    c.sendline("line one \\")
    c.expect(r"\.\.\. ")
    c.sendline("line two")
    c.expect(STATS)
    c.expect(">>> ")
    c.sendline("/reset")
    c.expect(r"\[conversation reset\]")
    c.expect(">>> ")
    c.sendline("/help")
    c.expect("/reset")
    c.expect(">>> ")
    c.sendline("/exit")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def test_ctrl_c_stops_the_reply_not_the_session(mod):
    c = _spawn(mod, "--temperature", "0", "--repetition-penalty", "1.1")  # replies run until the context is full
    for _ in range(2):
        c.sendline("tell me a long story")
        c.expect("story")
        time.sleep(0.5)  # the reply is streaming (or still prefilling: Ctrl-C stops that too)
        c.sendintr()
        c.expect(r"\[stopped\]")
        c.expect("finish: cancelled")
        c.expect(">>> ")
    c.sendintr()  # at the prompt: a hint, not an exit
    c.expect("Ctrl-D or /exit leaves")
    c.expect(">>> ")
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert "Traceback" not in (c.before or "")


def test_bad_flags_fail_before_the_gpu(mod):
    r = pexpect.run(f"{sys.executable} -m runtime.chat {mod} --top-p 7", cwd=str(REPO), encoding="utf-8",
                    withexitstatus=True, timeout=60)
    out, rc = r
    assert rc == 2 and "error: --top-p must be in (0, 1], got 7.0" in out and "uploading" not in out


def test_reused_cache_gives_the_same_reply_as_a_full_prefill(mod):
    from runtime import load
    from runtime.conversation import Conversation

    model = load(mod)
    conv = Conversation(model, "be brief", sampling=SamplingParams(), max_new_tokens=8)
    conv.reply("first question")
    second = conv.reply("second question")
    assert second.stats.cached_tokens > 10 and second.stats.prefilled_tokens < second.stats.prompt_tokens
    ids = conv.prompt_ids(conv.messages[:-1])  # the second turn's prompt, prefilled from scratch
    fresh = list(model.generate(ids, 8, SamplingParams(), conv.stops, reuse_cache=False))
    assert model.tokenizer.decode([t for t in fresh if t not in conv.stops]) == second.text
    # thinking off pre-fills an empty think block; history drops it again
    conv.enable_thinking = False
    conv.reply("third")
    prompt = model.tokenizer.decode(conv.prompt_ids(conv.messages[:-1]), skip_special_tokens=False)
    assert prompt.endswith("assistant\n<think>\n\n</think>\n\n") and prompt.count("<think>") == 1
