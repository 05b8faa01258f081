"""A multi-turn conversation on one model: history, chat template, and K/V reuse between turns.

Each turn renders the whole history through the model's chat template (so the prompt is exactly
what the template defines, e.g. Qwen3 drops earlier turns' <think> reasoning) and lets
``Model.generate(reuse_cache=True)`` keep the K/V of the longest prefix the cache already holds:
only what changed since the previous turn is prefilled, never the whole conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.errors import UserError
from runtime.api import GenerationStats, Model
from runtime.sampling import SamplingParams
from runtime.stops import IncrementalDecoder
from runtime.text import render_chat


class ContextFull(UserError):
    """The conversation no longer fits the compiled context."""


@dataclass
class Reply:
    text: str
    stats: GenerationStats


class Conversation:
    def __init__(self, model: Model, system: str | None = None, enable_thinking: bool | None = None,
                 sampling: SamplingParams | None = None, max_new_tokens: int | None = None) -> None:
        self.model, self.system, self.enable_thinking = model, system, enable_thinking
        self.sampling = sampling if sampling is not None else model.default_sampling()
        self.max_new_tokens = max_new_tokens
        self.stops = model.default_stop_ids()
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the history (the cache is simply overwritten by the next turn)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = render_chat(self.model.model_dir, messages, True, self.enable_thinking)
        return self.model.tokenizer.encode(text, add_special_tokens=False).ids

    def reply(self, user: str, on_text: Callable[[str], None] = lambda _: None,
              should_stop: Callable[[], bool] | None = None) -> Reply:
        """Answer ``user``; streams text pieces to ``on_text``. A reply cut short (should_stop)
        stays in the history as far as it got."""
        messages = [*self.messages, {"role": "user", "content": user}]
        ids = self.prompt_ids(messages)
        room = self.model.max_context - len(ids)
        if room < 1:
            raise ContextFull(f"the conversation ({len(ids)} tokens with this message) fills the compiled context "
                              f"of {self.model.max_context} tokens; /reset to start over")
        max_new = min(self.max_new_tokens, room) if self.max_new_tokens else room
        detok = IncrementalDecoder(self.model.tokenizer, self.stops)
        for tok in self.model.generate(ids, max_new, self.sampling, self.stops, reuse_cache=True,
                                       should_stop=should_stop):
            delta = detok.push(tok)
            if delta:
                on_text(delta)
        tail = detok.flush()
        if tail:
            on_text(tail)
        self.messages = [*messages, {"role": "assistant", "content": detok.text}]
        return Reply(detok.text, self.model.last_stats)
