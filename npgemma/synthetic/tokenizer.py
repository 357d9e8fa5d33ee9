"""A tiny Gemma-style `tokenizer.json` with PaliGemma's real special tokens, for tests.

Built with the `tokenizers` library, shaped like the real PaliGemma tokenizer as transformers
5.24's `GemmaTokenizer` rebuilds it: a BPE model with byte fallback (`<0x00>`..`<0xFF>`),
`fuse_unk`, `<unk>`; normalizer `Replace(" ", "▁")` and *no* dummy prefix (Gemma's
SentencePiece model has `add_dummy_prefix: false`); pre-tokenizer
`Split(" ", merged_with_previous)` (a no-op once spaces are `▁`, kept because HF builds it);
decoder `Replace("▁", " ") → ByteFallback → Fuse`.

Two layouts:

* `full=False` (compact, ~1.6k ids): specials 0–4, the 256 byte tokens, `"\\n"`, a few hundred
  merged pieces ("▁caption", "▁en", "▁detect", ...), then `<loc0000>`–`<loc1023>`,
  `<seg000>`–`<seg127>` and `<image>`.  `TINY_VOCAB_SIZE` pads it to a multiple of 64 rows, as
  HF pads 257153 to 257216.
* `full=True`: the real ids — `<pad>`0 `<eos>`1 `<bos>`2 `<unk>`3 `<mask>`4, `<start_of_turn>`106,
  `<end_of_turn>`107, `"\\n"`108, the byte tokens at Gemma's 217–472, filler pieces up to 255999,
  `<loc0000>`=256000 … `<seg127>`=257151, `<image>`=257152.

`<image>` is a special added token; `<locNNNN>`/`<segNNN>` are *non-special* added tokens (as
`PaliGemmaProcessor` adds them), so they survive `decode(skip_special_tokens=True)` — they are
the detection and segmentation output.  Both layouts segment text identically; only ids differ.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4 in both layouts
LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024))
SEG_TOKENS = tuple(f"<seg{i:03d}>" for i in range(128))
IMAGE_TOKEN = "<image>"
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))

# Words the BPE learns whole, each also with the "▁" (space) prefix.
_WORDS = """
caption en es fr de it detect segment answer describe question ocr what where how many is are
the a an of on in to and with this that there image photo picture cat cats dog dogs car person
people man woman bench red blue green white black sitting standing left right top bottom
""".split()
_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII; the rest falls back to bytes

FULL_VOCAB_SIZE = 257216        # embedding rows of the real checkpoints (257153 padded to 64)
FULL_IMAGE_TOKEN_ID = 257152
FULL_NEWLINE_ID = 108
_FULL_BYTES_START = 217         # Gemma's <0x00>
_FULL_BASE = 256000             # first <loc> id


@functools.lru_cache(maxsize=None)
def _learned_pieces(words: tuple[str, ...] = tuple(_WORDS),
                    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Single characters and merge products in training order, and the merges.

    Learned by `tokenizers`' own BPE trainer from each word on its own (so no merge spans a word
    boundary) and from whitespace runs; deterministic for a given `tokenizers` version.
    """
    alphabet = ["\n", "▁", *_CHARS]
    corpus = [*words, *("▁" + w for w in words),
              *("\n" * n for n in range(2, 32)), *("▁" * n for n in range(2, 32))]
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=0, show_progress=False,
                                  initial_alphabet=alphabet, special_tokens=[])
    tok = Tokenizer(BPE())
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    learned = sorted(model["vocab"], key=model["vocab"].get)
    pieces = alphabet + [p for p in learned if p not in set(alphabet)]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tuple(pieces), tuple(merges)


def _compact_vocab(pieces: list[str]) -> dict[str, int]:
    ordered = [*SPECIAL_TOKENS, *BYTE_TOKENS, *pieces, *LOC_TOKENS, *SEG_TOKENS, IMAGE_TOKEN]
    return {tok: i for i, tok in enumerate(ordered)}


def _full_vocab(pieces: list[str]) -> dict[str, int]:
    """Real Gemma ids where known (specials, turn markers, "\\n", whitespace runs, bytes)."""
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab["<2mass>"], vocab["[@BOS@]"] = 5, 6
    vocab.update({f"<unused{i}>": 7 + i for i in range(99)})
    vocab["<start_of_turn>"], vocab["<end_of_turn>"] = 106, 107
    vocab.update({"\n" * n: FULL_NEWLINE_ID - 1 + n for n in range(1, 32)})   # 108..138
    vocab.update({"▁" * n: 137 + n for n in range(2, 32)})                   # 139..168
    vocab.update({tok: _FULL_BYTES_START + b for b, tok in enumerate(BYTE_TOKENS)})
    next_id = _FULL_BYTES_START + 256
    for piece in pieces:
        if piece not in vocab:
            vocab[piece] = next_id
            next_id += 1
    taken = set(vocab.values())
    vocab.update({f"<filler{i}>": i for i in range(_FULL_BASE) if i not in taken})
    extra = [*LOC_TOKENS, *SEG_TOKENS, IMAGE_TOKEN]
    vocab.update({tok: _FULL_BASE + i for i, tok in enumerate(extra)})
    return vocab


def build_tokenizer(*, full: bool = False, words: tuple[str, ...] | None = None) -> Tokenizer:
    """The tokenizer as a `tokenizers.Tokenizer` (see the module docstring for the layouts).

    `words` replaces the default word list (each learned whole, with and without "▁"): the
    bundled demo model's tokenizer is this one over its task vocabulary.
    """
    pieces, merges = _learned_pieces(tuple(_WORDS) if words is None else tuple(words))
    pieces, merges = list(pieces), list(merges)
    vocab = _full_vocab(pieces) if full else _compact_vocab(pieces)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                        byte_fallback=True, dropout=None))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = list(SPECIAL_TOKENS)
    if full:
        specials += ["<2mass>", "[@BOS@]", *(f"<unused{i}>" for i in range(99)),
                     "<start_of_turn>", "<end_of_turn>"]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t in (*LOC_TOKENS, *SEG_TOKENS)])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)])
    return tok


def _tiny_layout() -> tuple[int, int]:
    pieces, _ = _learned_pieces()
    vocab = _compact_vocab(pieces)
    return vocab[IMAGE_TOKEN], vocab["\n"]


TINY_IMAGE_TOKEN_ID, TINY_NEWLINE_ID = _tiny_layout()
TINY_VOCAB_SIZE = -(-(TINY_IMAGE_TOKEN_ID + 1) // 64) * 64  # padded like HF's 257216


# What a hub PaliGemma checkpoint ships next to tokenizer.json (transformers reads these).
_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "additional_special_tokens": [IMAGE_TOKEN],
    "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False,
    "model_max_length": 1000000000000000019884624838656,
    "processor_class": "PaliGemmaProcessor",
    "tokenizer_class": "GemmaTokenizer",
}
_SPECIAL_TOKENS_MAP = {
    "additional_special_tokens": [IMAGE_TOKEN],
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}


def portable_json(tok: Tokenizer) -> str:
    """`tok` as tokenizer.json text that `tokenizers` releases back to 0.15 parse too.

    `tokenizers` 0.20 writes each BPE merge as a pair ["a", "b"]; releases before it read only
    the string "a b" and refuse the pair form ("data did not match any variant of untagged enum
    ModelWrapper") — and 0.19 is what the PaliGemma implementations of 2024 pinned. Every
    release since reads both forms alike, so the string form changes nothing for a current one.
    It needs pieces without a space, which these have (a space is "▁" before the model).
    Encodes and decodes alike under tokenizers 0.23.3, 0.19.1, 0.15.2 and 0.14.1, the oldest
    tested (0.13.3 reads it but splits `<loc>`/`<seg>` tokens written back to back into
    characters): tests/test_tokenizer_file.py, NPGEMMA_OLD_TOKENIZERS.
    """
    data = json.loads(tok.to_str())
    merges = data["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else list(m) for m in merges]
    spaced = [p for p in pairs if len(p) != 2 or any(" " in piece for piece in p)]
    if spaced:
        raise ValueError(f"merge {spaced[0]!r} has a piece with a space: no string form for it")
    data["model"]["merges"] = [f"{a} {b}" for a, b in pairs]
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def write_tokenizer(folder: str | os.PathLike, *, full: bool = False,
                    words: tuple[str, ...] | None = None) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`; return the json path.

    The folder is created if needed.  `preprocessor_config.json` (the image side) is not written
    here: it belongs to the checkpoint fixture.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(portable_json(build_tokenizer(full=full, words=words)), encoding="utf-8")
    for name, obj in (("tokenizer_config.json", _TOKENIZER_CONFIG),
                      ("special_tokens_map.json", _SPECIAL_TOKENS_MAP)):
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path


# ---- the same tokenizer as a SentencePiece model (`tokenizer.model`) ---------------------------
# The Hub's PaliGemma folders ship Gemma's SentencePiece model beside tokenizer.json, and some
# implementations read only that (keras-hub). Written here by hand in protobuf's wire format
# (sentencepiece_model.proto's field numbers), so nothing but this file is needed: a BPE model
# whose pieces are this tokenizer's, in id order, each merged piece scored by its merge rank
# (SentencePiece's BPE merges the best-scored pair first, as `tokenizers` applies its merges in
# rank order), byte fallback on, no dummy prefix, spaces escaped as "▁" — Gemma's settings.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32s as protobuf writes them: ten bytes
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    import struct

    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def sentencepiece_model(*, full: bool = False, words: tuple[str, ...] | None = None) -> bytes:
    """This tokenizer as a serialized SentencePiece ModelProto (`tokenizer.model`)."""
    tok = build_tokenizer(full=full, words=words)
    vocab = tok.get_vocab(with_added_tokens=True)
    pieces, _ = _learned_pieces(tuple(_WORDS) if words is None else tuple(words))
    rank = {p: i for i, p in enumerate(pieces)}
    special = {"<pad>": _CONTROL, "<eos>": _CONTROL, "<bos>": _CONTROL, "<unk>": _UNKNOWN}
    proto = b""
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if piece in special:
            kind, score = special[piece], 0.0
        elif piece in BYTE_TOKENS:
            kind, score = _BYTE, 0.0
        elif piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
            kind, score = _USER_DEFINED, 0.0  # <mask>, <loc…>, <seg…>, <image>, fillers
        else:
            kind, score = _NORMAL, -float(rank.get(piece, 0))
        proto += _field(1, _field(1, piece) + _field(2, score) + _field(3, kind))
    trainer = (_field(3, 2) + _field(4, len(vocab)) + _field(35, True) + _field(40, 3)
               + _field(41, 2) + _field(42, 1) + _field(43, 0)  # BPE; unk 3, bos 2, eos 1, pad 0
               + _field(45, "<unk>") + _field(46, "<bos>") + _field(47, "<eos>") + _field(48, "<pad>"))
    normalizer = (_field(1, "identity") + _field(3, False) + _field(4, False) + _field(5, True))
    return proto + _field(2, trainer) + _field(3, normalizer)


def write_sentencepiece(folder: str | os.PathLike, *, full: bool = False) -> Path:
    path = Path(folder) / "tokenizer.model"
    path.write_bytes(sentencepiece_model(full=full))
    return path
