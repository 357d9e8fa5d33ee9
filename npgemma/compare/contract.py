"""The adapter contract: what FUNC returns, checked (`check_returned`), and how it is called
(`call`, `call_batch`), each call under the request's timeout.

The contract in full is docs/check-your-implementation.md ("The adapter contract"):

    FUNC(model_dir: str, image: PIL.Image.Image, prompt: str, *, max_new_tokens, dtype, device)
        -> dict

each keyword passed only when FUNC takes it (by name or **kwargs); "logits" float[L, V] at
every prompt position (or float[V], the last one) and, optionally, "input_ids" int[L],
"pixel_values" float[3, S, S], "token_ids", "hidden_states" (transformers' L+1 order or
npgemma's L+2), "step_logits" float[T, V], "top_logprobs" (per generated token {id: logprob}), "weights"
({checkpoint key: the effective, dequantized weight}: a quantized implementation's own weights,
which the reference then runs on; quantdiag.py).
A batch passes lists and expects one such dict per row, as the row alone would give it.
NotImplementedError("why") declines an input by design (neither a pass nor a failure); any
other exception is a crash (one line); a call past its timeout is abandoned and reported as
"timed out after N s".
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError, NpgemmaError, Unsupported


class TimedOut(NpgemmaError):
    """The adapter gave no answer within the timeout (the call is abandoned, the run goes on)."""

    def __init__(self, spec: str, seconds: float):
        super().__init__(f"--against {spec}: timed out after {seconds:g} s")
        self.seconds = seconds


@dataclass
class Returned:
    """What an adapter returned, checked and as NumPy (None where it gave nothing)."""

    logits: np.ndarray | None           # float32[L, V], or [1, V] when last_only
    last_only: bool
    input_ids: np.ndarray | None        # int64[L]
    pixel_values: np.ndarray | None     # float32[3, S, S]
    token_ids: list[int] | None
    hidden_states: list | None          # float32[L, D] each, transformers' order (L+1 entries)
    step_logits: np.ndarray | None      # float32[T, V]
    top_logprobs: list[dict] | None     # per step {id: logprob}
    weights: dict | None = None         # {checkpoint key: float32 array}: its effective weights


def _token_id(t, spec: str) -> int:
    """A token id as given: an integer (1.5 or NaN is no id, never truncated to one)."""
    if not float(t).is_integer():
        raise InputError(f"--against {spec}: 'token_ids' holds {float(t):g}; expected integer ids")
    return int(t)


def _array(x, what: str, spec: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch (bfloat16 included)
        x = x.detach().float().cpu().numpy()
    try:
        a = np.asarray(x)
        return a.astype(np.float32) if a.dtype.kind == "V" or a.dtype.name == "bfloat16" else a
    except (TypeError, ValueError) as e:
        raise InputError(f"--against {spec}: {what!r} is not an array ({e})") from None


def _squeeze_batch(a: np.ndarray, ndim: int, what: str, spec: str) -> np.ndarray:
    if a.ndim == ndim + 1 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim:
        raise InputError(f"--against {spec}: {what!r} has shape {list(a.shape)}; expected "
                         f"{ndim} dimensions (a leading batch of 1 is allowed)")
    return a


def check_returned(out, spec: str, num_layers: int) -> Returned:
    """Validate an adapter's dict against the contract: one clear error per problem (a value of
    the wrong kind inside it, too: never a traceback)."""
    try:
        return _check_returned(out, spec, num_layers)
    except InputError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise InputError(f"--against {spec}: FUNC's dict does not follow the contract "
                         f"({type(e).__name__}: {e})") from None


def _check_returned(out, spec: str, num_layers: int) -> Returned:
    if not isinstance(out, dict):
        raise InputError(f"--against {spec}: FUNC returned {type(out).__name__}, expected a dict "
                         "with 'logits'")
    unknown = set(out) - {"logits", "input_ids", "pixel_values", "token_ids", "hidden_states",
                          "step_logits", "top_logprobs", "weights"}
    if unknown:
        raise InputError(f"--against {spec}: unknown keys {sorted(unknown)} in FUNC's dict")
    if out.get("logits") is None and not out.get("top_logprobs") and out.get("token_ids") is None:
        raise InputError(f"--against {spec}: FUNC's dict has no 'logits' (nor 'top_logprobs' "
                         "or 'token_ids')")
    logits, last_only = None, False
    if out.get("logits") is not None:
        logits = _array(out["logits"], "logits", spec).astype(np.float32)
        if logits.ndim == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.ndim == 1:
            logits, last_only = logits[None], True
        if logits.ndim != 2:
            raise InputError(f"--against {spec}: 'logits' has shape {list(logits.shape)}; "
                             "expected [L, V] or [V]")
    ids = pix = steps = hidden = None
    if out.get("input_ids") is not None:
        ids = _squeeze_batch(_array(out["input_ids"], "input_ids", spec), 1, "input_ids", spec)
        ids = ids.astype(np.int64)
    if out.get("pixel_values") is not None:
        pix = _squeeze_batch(_array(out["pixel_values"], "pixel_values", spec), 3,
                             "pixel_values", spec).astype(np.float32)
    tokens = None if out.get("token_ids") is None else [
        _token_id(t, spec) for t in np.asarray(_array(out["token_ids"], "token_ids", spec)).reshape(-1)]
    if out.get("step_logits") is not None:
        steps = _squeeze_batch(_array(out["step_logits"], "step_logits", spec), 2, "step_logits",
                               spec).astype(np.float32)
    if out.get("hidden_states") is not None:
        hidden = [_squeeze_batch(_array(h, "hidden_states", spec), 2, "hidden_states", spec)
                  .astype(np.float32) for h in out["hidden_states"]]
        if len(hidden) == num_layers + 2:  # npgemma's order: drop the last layer's raw output
            hidden = hidden[:-2] + hidden[-1:]
        if len(hidden) != num_layers + 1:
            raise InputError(f"--against {spec}: 'hidden_states' has {len(hidden)} entries; "
                             f"expected {num_layers + 1} (input, each layer, final norm as "
                             f"transformers orders them) or {num_layers + 2}")
    top = None
    if out.get("top_logprobs") is not None:
        top = [{int(k): float(v) for k, v in step.items()} for step in out["top_logprobs"]]
    weights = None
    if out.get("weights") is not None:
        if not isinstance(out["weights"], dict):
            raise InputError(f"--against {spec}: 'weights' is {type(out['weights']).__name__}; "
                             "expected a dict {checkpoint key: array}")
        weights = {str(k): _array(v, f"weights[{k!r}]", spec).astype(np.float32)
                   for k, v in out["weights"].items()}
    return Returned(logits, last_only, ids, pix, tokens, hidden, steps, top, weights)


def call(spec: str, func: Callable, model_dir: str, image, prompt: str, num_layers: int,
         timeout: float | None = None) -> Returned:
    """Run the adapter; its exceptions become one line (NPGEMMA_DEBUG=1 keeps the traceback)."""
    return check_returned(_called(spec, func, model_dir, image, prompt, timeout), spec, num_layers)


def call_batch(spec: str, func: Callable, model_dir: str, images: list, prompts: list,
               num_layers: int, timeout: float | None = None) -> list[Returned]:
    """A batch: FUNC(model_dir, [image, ...], [prompt, ...]) -> one dict per row, each as the
    row's own single call would return it (its own positions, no padding)."""
    out = _called(spec, func, model_dir, images, prompts, timeout)
    if not isinstance(out, (list, tuple)) or len(out) != len(images):
        got = f"{len(out)} entries" if isinstance(out, (list, tuple)) else type(out).__name__
        raise InputError(f"--against {spec}: a batch of {len(images)} rows returned {got}; "
                         "expected a list of one dict per row")
    return [check_returned(row, f"{spec} (batch row {i})", num_layers) for i, row in enumerate(out)]


def _called(spec: str, func: Callable, model_dir: str, image, prompt, timeout: float | None):
    """FUNC's answer; a remote FUNC (`remote_timeout`) enforces the timeout itself (it kills its
    child process), an in-process one runs in a daemon thread that is abandoned when it is late
    (Python cannot kill a thread: it runs on, unseen, until it returns or the process ends)."""
    if not timeout or getattr(getattr(func, "func", func), "remote_timeout", False):
        return _guarded(spec, func, model_dir, image, prompt)
    box: dict = {}

    def work():
        try:
            box["out"] = _guarded(spec, func, model_dir, image, prompt)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    worker = threading.Thread(target=work, name=f"npgemma-adapter {spec}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimedOut(spec, timeout)
    if "error" in box:
        raise box["error"]
    return box["out"]


def _guarded(spec: str, func: Callable, model_dir: str, image, prompt):
    try:
        return func(model_dir, image, prompt)
    except NpgemmaError:
        raise
    except NotImplementedError as e:  # the adapter declines the case by design, saying why
        raise Unsupported(f"--against {spec}: not supported by the implementation: {e}") from None
    except Exception as e:
        if os.environ.get("NPGEMMA_DEBUG"):
            raise
        raise InputError(f"--against {spec}: the adapter raised {type(e).__name__}: {e}") from None
