"""What one comparison is asked to do: the `compare/` API's input (the CLI builds it from its
arguments; `conform` builds one per case)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 600.0   # per case: a real checkpoint loads and runs in minutes, a hang never ends


@dataclass(frozen=True)
class Request:
    against: str                     # SPEC: a built-in, openai:URL, PKG.MODULE:FUNC, FILE.py:FUNC
    model: str | None = None         # checkpoint folder or Hub id; None: the bundled demo model
    image: str | None = None         # one input: image file and prompt
    prompt: str = "caption en"
    batch: tuple = ()                # or a left-padded batch: ((image file, prompt), ...)
    dtype: str = "float32"           # the other side's compute dtype (it judges the tolerances)
    device: str = "cpu"
    attn: str = "eager"              # --against transformers' attention implementation
    max_new_tokens: int = 8
    python: str | None = None        # run the adapter in this interpreter (remote.py)
    diagnose: bool = True
    window: str = "transformers"   # whose Gemma-2 window npgemma's side runs (config.WINDOWS)
    timeout: float | None = DEFAULT_TIMEOUT_S   # seconds per call; None or 0: no limit
