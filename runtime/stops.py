"""Streaming text from token ids, and stop strings.

Byte-level BPE tokens can end inside a multi-byte UTF-8 character, and a token's text can depend on
its neighbours, so text is decoded over a short window of recent tokens and released only once it
no longer ends in a replacement character (the scheme vLLM and HF's TextStreamer use).

Stop strings follow Hugging Face's ``stop_strings`` rule: generation stops at the first token
whose text completes a stop string, i.e. the stop string occurs in the output text and overlaps
that last token. Where the string ends, and what the caller keeps, is reported separately: HF
keeps the stop string in the output; OpenAI's API drops it and everything after it.
"""

from __future__ import annotations

from collections.abc import Sequence

_WINDOW = 6  # tokens of left context re-decoded with each new token


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas; ``skip`` ids (EOS) decode to nothing."""

    def __init__(self, tokenizer, skip: set[int] | frozenset[int] = frozenset()) -> None:
        self.tok, self.skip = tokenizer, skip
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] is the left context already released as text
        self.read = 0
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.skip])

    def push(self, tok: int) -> str:
        """Add one token; return the newly complete text (maybe empty)."""
        self.ids.append(tok)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if now.endswith("\ufffd") or len(now) <= len(before) or not now.startswith(before):
            if len(self.ids) - self.read > 16:  # a genuinely invalid byte sequence: release it anyway
                return self._release(now[len(before):] if now.startswith(before) else "")
            return ""
        return self._release(now[len(before):])

    def _release(self, delta: str) -> str:
        self.read = len(self.ids)
        self.prefix = max(self.read - _WINDOW, 0)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        return self._release(now[len(before):] if now.startswith(before) else "")


class StopStrings:
    """Finds HF-style stop strings in the text produced so far."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)

    def find(self, text: str, new_from: int) -> tuple[int, str] | None:
        """Earliest stop string in ``text`` that ends after ``new_from`` (the start of the newest
        text): returns (index where it starts, the string), or None."""
        best: tuple[int, str] | None = None
        lo = max(new_from - self.longest + 1, 0)
        for s in self.stops:
            i = text.find(s, max(lo, new_from - len(s) + 1))
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def holdback(self, text: str) -> int:
        """How many trailing characters of ``text`` could still be the start of a stop string (a
        streaming server holds those back until it knows)."""
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
