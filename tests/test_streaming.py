"""Streaming decode (npgemma/generation/streaming.py): pieces join to exactly `decode(all ids)`,
at most one piece per token, byte-fallback runs held until they end.

The reference is the tokenizer's own batch `decode`; the inputs are the byte sequences that
break naive streaming: UTF-8 split across byte tokens, emoji (four bytes, ZWJ sequences), bytes
that never form valid UTF-8 (ByteFallback renders a whole invalid run as one U+FFFD per byte,
valid bytes before the bad one included), runs interrupted by dropped special tokens, and the
`<loc>`/`<seg>` runs of detection answers.
"""

from __future__ import annotations

import random

import pytest

from npgemma.generation.streaming import stream_decode
from npgemma.synthetic.tokenizer import build_tokenizer


@pytest.fixture(scope="module", params=[False, True], ids=["compact", "full-ids"])
def tok(request):
    return build_tokenizer(full=request.param)


def _bytes(tok, data: bytes) -> list[int]:
    return [tok.token_to_id(f"<0x{b:02X}>") for b in data]


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def _pieces_with_timing(tok, ids, skip=True):
    """[(number of ids consumed when the piece came out, piece)]."""
    consumed = [0]

    def feed():
        for i in ids:
            consumed[0] += 1
            yield i

    return [(consumed[0], p) for p in stream_decode(tok, feed(), skip_special_tokens=skip)]


def _check(tok, ids, skip=True):
    timed = _pieces_with_timing(tok, ids, skip)
    pieces = [p for _, p in timed]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    assert all(pieces), "no empty pieces"
    steps = [n for n, _ in timed]
    assert len(steps) <= len(ids) + 1 and steps == sorted(steps)
    assert len(set(steps[:-1])) == len(steps[:-1]), "at most one piece per token (plus a flush)"
    return timed


def test_plain_text_is_one_piece_per_token(tok):
    ids = _ids(tok, "caption en the cat is on the bench")
    timed = _check(tok, ids)
    assert [n for n, _ in timed] == list(range(1, len(ids) + 1))


def test_loc_and_seg_runs_stream_one_per_token(tok):
    text = "<loc0010><loc0020><loc0900><loc1023> cat ; <seg000><seg127>"
    ids = _ids(tok, text)
    timed = _check(tok, ids)
    assert [p for _, p in timed[:4]] == ["<loc0010>", "<loc0020>", "<loc0900>", "<loc1023>"]
    assert "".join(p for _, p in timed) == text


@pytest.mark.parametrize("text", ["é", "日本", "🐱", "👩\u200d👩\u200d👧", "héllo 日本 🐱 x"])
def test_utf8_split_across_byte_tokens_is_held_until_the_run_ends(tok, text):
    data = text.encode("utf-8")
    ids = _bytes(tok, data) + _ids(tok, " cat")
    timed = _check(tok, ids)
    assert timed[0] == (len(data) + 1, text + " cat")  # nothing while the byte run is open
    alone = _check(tok, _bytes(tok, data))              # run open at the end: the flush
    assert [p for _, p in alone] == [text]


def test_round_trip_of_tokenized_unicode(tok):
    for text in ("héllo 日本 🐱", "a🐱b", "ümlaut ß", "tabs\tand\nnewlines", "  two  spaces"):
        ids = _ids(tok, text)
        assert tok.decode(ids) == text
        assert "".join(p for _, p in _check(tok, ids)) == text


@pytest.mark.parametrize("data, tail", [
    (b"\x9c", ""),                 # a lone continuation byte
    (b"\xe6\x97", ""),             # a 3-byte sequence cut short
    (b"3\x9c", ""),                # a valid byte, then an invalid one: both render as U+FFFD
    (b"\xc3\xa9\xff", " cat"),     # a complete "é" spoiled by a trailing 0xFF
    (b"\xf0\x9f\x90", " cat"),     # an emoji missing its last byte
    (b"\xed\xa0\x80", " cat"),     # an encoded surrogate (invalid in UTF-8)
])
def test_invalid_bytes_render_as_decode_renders_them(tok, data, tail):
    ids = _bytes(tok, data) + _ids(tok, tail)
    timed = _check(tok, ids)
    assert "".join(p for _, p in timed) == "\ufffd" * len(data) + tail


def test_invalid_run_after_text_does_not_rewrite_shown_text(tok):
    # "a" then bytes <0x33> <0x9C>: plain DecodeStream would show "3" and then fail, because
    # the run renders as two U+FFFD once the bad byte arrives.
    ids = _ids(tok, "a") + _bytes(tok, b"3\x9c") + _ids(tok, "b") + _bytes(tok, b"3") + _ids(tok, "c")
    assert "".join(p for _, p in _check(tok, ids)) == "a\ufffd\ufffdb3c"


def test_dropped_special_tokens_join_the_bytes_around_them(tok):
    eos, pad = tok.token_to_id("<eos>"), tok.token_to_id("<pad>")
    ids = _bytes(tok, b"\xc3") + [eos, pad, 10**6] + _bytes(tok, b"\xa9") + _ids(tok, "x")
    assert tok.decode(ids) == "éx"
    _check(tok, ids, skip=True)
    _check(tok, ids, skip=False)


def test_random_sequences_match_batch_decode(tok):
    rng = random.Random(0)
    size = tok.get_vocab_size(with_added_tokens=True)
    byte_ids = _bytes(tok, bytes(range(256)))
    pools = [byte_ids, _bytes(tok, "é日🐱".encode()), list(range(size)), _ids(tok, "<loc0001> cat")]
    for _ in range(300):
        ids = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))]
        _check(tok, ids, skip=rng.random() < 0.8)


def test_empty_stream_yields_nothing(tok):
    assert list(stream_decode(tok, [])) == []
