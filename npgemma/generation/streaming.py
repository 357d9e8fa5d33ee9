"""Token ids arriving one by one -> text pieces, through `tokenizers.decoders.DecodeStream`.

`DecodeStream` keeps a short window of recent ids instead of re-decoding the whole answer at
every step. One rule is added on top, for Gemma's byte fallback: a character outside the
vocabulary is spelled as a run of byte tokens `<0xNN>` (an emoji takes four), and the
`ByteFallback` decoder renders a run as a whole — valid UTF-8, or one U+FFFD per byte. A run's
text is therefore not final until the run ends (one invalid byte turns the valid bytes before it
into U+FFFD too), so a run is held here and handed to `DecodeStream` together with the token
that ends it. A run still open at the last token is flushed as `decode(all ids)` renders it.
The pieces always join to exactly `tokenizer.decode(all ids)`.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import tokenizers
from tokenizers.decoders import DecodeStream

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # what the ByteFallback decoder turns into a byte


def stream_decode(tokenizer: tokenizers.Tokenizer, ids: Iterable[int],
                  skip_special_tokens: bool = True) -> Iterator[str]:
    """Yield at most one non-empty piece per id; `"".join(pieces) == tokenizer.decode(all ids)`."""
    stream = DecodeStream(skip_special_tokens=skip_special_tokens)
    dropped = _special_ids(tokenizer) if skip_special_tokens else frozenset()
    held: list[int] = []   # an open byte run (and skipped specials inside it)
    seen: list[int] = []
    shown = 0              # characters yielded so far
    for token in ids:
        token = int(token)
        seen.append(token)
        held.append(token)
        if _continues_run(tokenizer, token, dropped):
            continue
        piece = stream.step(tokenizer, held)
        held = []
        if piece:
            shown += len(piece)
            yield piece
    tail = tokenizer.decode(seen, skip_special_tokens=skip_special_tokens)[shown:]
    if tail:
        yield tail


def _continues_run(tokenizer: tokenizers.Tokenizer, token: int, dropped: frozenset[int]) -> bool:
    """A byte token, or a token decoding drops (a skipped special, an id past the vocabulary):
    the bytes on either side of a dropped token form one run."""
    text = tokenizer.id_to_token(token)
    return text is None or token in dropped or _BYTE_TOKEN.fullmatch(text) is not None


def _special_ids(tokenizer: tokenizers.Tokenizer) -> frozenset[int]:
    return frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
