"""A byte-level BPE tokenizer in Qwen's format, built without downloading anything.

The vocabulary is synthetic (bytes, then letter/digit pairs, then triples) but the machinery is
the real one: byte-level pre-tokenization, BPE merges, and Qwen3's special tokens at their real
ids when the vocabulary is full size (``<|endoftext|>`` = 151643).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_FIRST_SPECIAL = 151643

# Qwen3's conventions, written small: ChatML turns; earlier assistant turns lose their <think>
# reasoning; ``enable_thinking=False`` pre-fills an empty think block after the generation prompt.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = (content.split('</think>')|last).lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def special_ids(vocab_size: int) -> dict[str, int]:
    first = QWEN_FIRST_SPECIAL if vocab_size >= QWEN_FIRST_SPECIAL + len(SPECIALS) else vocab_size - len(SPECIALS)
    return {s: first + i for i, s in enumerate(SPECIALS)}


def build(vocab_size: int) -> Tokenizer:
    n_regular = special_ids(vocab_size)["<|endoftext|>"]
    if n_regular < 256:
        raise ValueError(f"vocab_size {vocab_size} too small for a byte-level tokenizer (needs >= 259)")
    byte_chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(byte_chars)}
    merges: list[tuple[str, str]] = []
    alnum = [c for c in byte_chars if c.isascii() and c.isalnum()]
    frontier = list(alnum)
    while len(vocab) < n_regular:
        nxt = []
        for a in frontier:
            for b in alnum:
                if len(vocab) >= n_regular:
                    break
                vocab[a + b] = len(vocab)
                merges.append((a, b))
                nxt.append(a + b)
        frontier = nxt
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok
