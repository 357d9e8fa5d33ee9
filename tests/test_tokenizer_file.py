"""The suite's tokenizer.json in the form old `tokenizers` releases read (BPE merges as "a b"
strings), behaving exactly as the tokenizer it was written from.

NPGEMMA_OLD_TOKENIZERS=PY[:PY...] (interpreters with an old `tokenizers`, e.g. 0.19.1 and
0.14.1) also runs the written file through each of them and asks for the same ids and text.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from tokenizers import Tokenizer

from npgemma.synthetic.tokenizer import build_tokenizer, write_tokenizer

TEXTS = ["caption en\n", "detect cat ; dog\n", "answer en what is the  man doing?\n",
         "héllo wörld ✓ 日本 🙂", "<image><image><bos>segment red car\n",
         "<loc0001><loc1023><seg005> cat", "  lead  and trail  ", "\n\n\ttab", "a" * 40]

_PROBE = """
import json, sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps([[t.encode(s).ids, t.decode(t.encode(s).ids, skip_special_tokens=False)]
                  for s in texts]))
"""


def _behaviour(tok: Tokenizer) -> list:
    return [[tok.encode(s).ids, tok.decode(tok.encode(s).ids, skip_special_tokens=False)]
            for s in TEXTS]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The compact layout (the full one takes the same path, 30 s slower: its 257k ids)."""
    return write_tokenizer(tmp_path_factory.mktemp("tok")), build_tokenizer()


def test_merges_are_written_as_strings(written):
    path, _ = written
    merges = json.loads(path.read_text(encoding="utf-8"))["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)


def test_written_file_behaves_as_the_tokenizer_it_came_from(written):
    path, tok = written
    assert _behaviour(Tokenizer.from_file(str(path))) == _behaviour(tok)
    assert Tokenizer.from_file(str(path)).get_vocab() == tok.get_vocab()


@pytest.mark.skipif(not os.environ.get("NPGEMMA_OLD_TOKENIZERS"),
                    reason="NPGEMMA_OLD_TOKENIZERS names no interpreter with an old tokenizers")
def test_old_tokenizers_releases_read_it_alike(written):
    path, tok = written
    for python in os.environ["NPGEMMA_OLD_TOKENIZERS"].split(":"):
        done = subprocess.run([python, "-c", _PROBE, str(path), json.dumps(TEXTS)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{python}: {done.stderr.strip().splitlines()[-1:]}"
        assert json.loads(done.stdout) == _behaviour(tok), python
