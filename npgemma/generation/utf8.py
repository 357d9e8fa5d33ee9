"""Text that must be UTF-8 (prompts, --batch files), refused in one line naming where it is bad.

Three ways a Python string or file is not UTF-8, each found before it reaches the tokenizer:

- a command-line argument holding bytes that are not UTF-8: Python decodes argv with
  `surrogateescape`, so byte 0xff arrives as the lone surrogate U+DCFF;
- a lone surrogate written as a JSON escape (`"\\ud800"`) in a --batch line: valid JSON, but no
  UTF-8 encodes it;
- a file whose bytes are not UTF-8.

Offsets are byte offsets: into the argument's bytes, the prompt's UTF-8, or the file.
"""

from __future__ import annotations

import re

from ..errors import InputError

# A JSON \u escape of a surrogate: a high one followed by a low one is a pair (one character).
_SURROGATE_ESCAPE = re.compile(r"(\\+)u(d[89ab][0-9a-f]{2})(\\u(d[c-f][0-9a-f]{2}))?"
                               r"|(\\+)u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def _first_unencodable(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def checked(text: str, what: str) -> str:
    """`text` unchanged when UTF-8 can encode it; else one InputError naming `what`, the byte
    offset and the culprit: an undecodable argv byte (a surrogate escape) or a lone surrogate."""
    i = _first_unencodable(text)
    if i is None:
        return text
    # The bytes before it, as they were given (escaped bytes back to themselves).
    offset = len(text[:i].encode("utf-8", "surrogateescape"))
    code = ord(text[i])
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for an undecodable byte
        raise InputError(f"{what}: not valid UTF-8: byte 0x{code - 0xDC00:02x} at byte offset "
                         f"{offset}")
    raise InputError(f"{what}: not valid UTF-8: a lone surrogate U+{code:04X} at byte offset "
                     f"{offset} (UTF-8 cannot encode it)")


def lone_surrogate_escape(line: str) -> int | None:
    """Character index in a JSON text of the first `\\uD800`-`\\uDFFF` escape that is not half
    of a surrogate pair (an escaped backslash before the `u` does not count), or None."""
    for m in _SURROGATE_ESCAPE.finditer(line):
        slashes = m.group(1) or m.group(5)
        if len(slashes) % 2 == 0:  # "\\ud800" is a backslash and the text "ud800"
            continue
        if m.group(2) is None or m.group(3) is None:  # a low one alone, or a high one alone
            return m.start() + len(slashes) - 1
    return None


def read_lines(path: str, what: str) -> list[str]:
    """A text file's lines, decoded as UTF-8; else one InputError naming `what`, the byte offset
    and line of the first byte that is not UTF-8. OSError passes through."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{what}: not UTF-8: byte 0x{data[e.start]:02x} at byte offset "
                         f"{e.start} (line {line}): {e.reason}") from None


def checked_json_string(value: str, line: str, what: str) -> str:
    """`value`, a string parsed from the JSON text `line`, unchanged when UTF-8 can encode it;
    else one InputError naming `what` and the byte offset in `line` of the lone surrogate's
    escape that put it there."""
    if _first_unencodable(value) is None:
        return value
    i = lone_surrogate_escape(line)
    if i is None:  # not from an escape (cannot happen for a line read as UTF-8): say where in it
        return checked(value, what)
    raise InputError(f"{what}: a lone surrogate escape {line[i:i + 6]} at byte offset "
                     f"{len(line[:i].encode('utf-8'))} of the line (UTF-8 cannot encode it)")
