"""Adapters: how `npgemma parity --against SPEC` runs the other implementation.

The contract (README, "Check your own implementation"):

    FUNC(model_dir: str, image: PIL.Image.Image, prompt: str) -> dict

with "logits" float[L, V] at every prompt position (or float[V], the last one) and, optionally,
"input_ids" int[L], "pixel_values" float[3, S, S], "token_ids" (its greedy continuation),
"hidden_states" (the decoder's, one float[L, D] per entry: transformers' L+1 order — input,
layers 0..n-2, final-normed — or npgemma's L+2 with the last layer's raw output too),
"step_logits" float[T, V] (the logits each of token_ids was picked from) and
"top_logprobs" (per generated token a {token id: logprob} dict; a server that returns only
these may leave "logits" out). FUNC may take a `max_new_tokens` keyword. Arrays may be NumPy,
anything `np.asarray` reads, or torch tensors. FUNC raises NotImplementedError("why") for an
input its implementation declines by design (transformers offers no sdpa for Gemma 2): the
case is reported as not supported, with that reason, and is neither a pass nor a failure.
A batch case passes lists, FUNC(model_dir, [image, ...], [prompt, ...]), and expects a list of
one such dict per row, each as that row alone would give it (its own prompt positions, no
padding); an implementation without batches raises NotImplementedError for lists.

SPEC is `PKG.MODULE:FUNC`, `path/to/file.py:FUNC`, or a built-in: `torch` (npgemma's torch
backend), `transformers` (the installed version), `openai:URL` (an OpenAI-compatible server),
`keras-hub` or `mlx-vlm` (adapters in `peers/`, through each peer's own public API). With
`python=PATH` (`--python`), a file or module adapter runs in that interpreter (a peer's own
virtual environment) and its arrays come back (`remote.py`); the two peers always run so.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError


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
    """Validate an adapter's dict against the contract: one clear error per problem."""
    if not isinstance(out, dict):
        raise InputError(f"--against {spec}: FUNC returned {type(out).__name__}, expected a dict "
                         "with 'logits'")
    unknown = set(out) - {"logits", "input_ids", "pixel_values", "token_ids", "hidden_states",
                          "step_logits", "top_logprobs"}
    if unknown:
        raise InputError(f"--against {spec}: unknown keys {sorted(unknown)} in FUNC's dict")
    if out.get("logits") is None and not out.get("top_logprobs"):
        raise InputError(f"--against {spec}: FUNC's dict has no 'logits' (nor 'top_logprobs')")
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
        int(t) for t in np.asarray(_array(out["token_ids"], "token_ids", spec)).reshape(-1)]
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
    return Returned(logits, last_only, ids, pix, tokens, hidden, steps, top)


# ---- resolving SPEC --------------------------------------------------------------------------

def _load_func(spec: str) -> Callable:
    if ":" not in spec:
        raise InputError(f"--against {spec}: expected PKG.MODULE:FUNC, path/to/file.py:FUNC, "
                         "torch, transformers or openai:URL")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            if not os.path.isfile(where):
                raise InputError(f"--against {spec}: no such file {where}")
            loader = importlib.util.spec_from_file_location(
                os.path.splitext(os.path.basename(where))[0], where)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--against {spec}: cannot import {where} ({type(e).__name__}: {e})") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise InputError(f"--against {spec}: {where} has no function {name!r}")
    return func


def _accepts(func: Callable, keyword: str) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)


PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")
PEERS = {"keras-hub": os.path.join(PEERS_DIR, "keras_hub_adapter.py") + ":run",
         "mlx-vlm": os.path.join(PEERS_DIR, "mlx_vlm_adapter.py") + ":run"}


def resolve(spec: str, *, dtype: str = "float32", device: str = "cpu", attn: str = "eager",
            max_new_tokens: int = 8, python: str | None = None) -> Callable:
    """SPEC -> FUNC(model_dir, image, prompt) -> dict (options of the built-ins bound)."""
    if spec in PEERS or python is not None:
        if spec in ("torch", "transformers") or spec.startswith("openai:"):
            raise InputError(f"--python runs a file or module adapter (or keras-hub, mlx-vlm) in "
                             f"another interpreter; {spec!r} runs in this one")
        from .remote import remote_adapter

        target = PEERS.get(spec, spec)
        if ":" not in target:
            raise InputError(f"--against {spec}: expected PKG.MODULE:FUNC or path/to/file.py:FUNC")
        where = target.rsplit(":", 1)[0]
        if where.endswith(".py") and not os.path.isfile(where):
            raise InputError(f"--against {spec}: no such file {where}")
        return functools.partial(remote_adapter, python=python or sys.executable, spec=target,
                                 max_new_tokens=max_new_tokens, dtype=dtype, label=spec)
    if spec == "torch":
        return functools.partial(torch_adapter, device=device, dtype=dtype,
                                 max_new_tokens=max_new_tokens)
    if spec == "transformers":
        from .hf import transformers_adapter
        return functools.partial(transformers_adapter, dtype=dtype, attn=attn, device=device,
                                 max_new_tokens=max_new_tokens)
    if spec.startswith("openai:"):
        from .openai import openai_adapter
        return functools.partial(openai_adapter, url=spec[len("openai:"):],
                                 max_new_tokens=max_new_tokens)
    func = _load_func(spec)
    if _accepts(func, "max_new_tokens"):
        return functools.partial(func, max_new_tokens=max_new_tokens)
    return func


def call(spec: str, func: Callable, model_dir: str, image, prompt: str, num_layers: int) -> Returned:
    """Run the adapter; its exceptions become one line (NPGEMMA_DEBUG=1 keeps the traceback)."""
    return check_returned(_called(spec, func, model_dir, image, prompt), spec, num_layers)


def call_batch(spec: str, func: Callable, model_dir: str, images: list, prompts: list,
               num_layers: int) -> list[Returned]:
    """A batch: FUNC(model_dir, [image, ...], [prompt, ...]) -> one dict per row, each as the
    row's own single call would return it (its own positions, no padding)."""
    out = _called(spec, func, model_dir, images, prompts)
    if not isinstance(out, (list, tuple)) or len(out) != len(images):
        got = f"{len(out)} entries" if isinstance(out, (list, tuple)) else type(out).__name__
        raise InputError(f"--against {spec}: a batch of {len(images)} rows returned {got}; "
                         "expected a list of one dict per row")
    return [check_returned(row, f"{spec} (batch row {i})", num_layers) for i, row in enumerate(out)]


def _called(spec: str, func: Callable, model_dir: str, image, prompt):
    from ..errors import NpgemmaError, Unsupported

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


# ---- the built-in torch adapter (npgemma's own torch backend) --------------------------------

def torch_adapter(model_dir, image, prompt, *, device="cpu", dtype="float32", max_new_tokens=8):
    """npgemma's torch backend through the contract (prefix logits, hidden states, greedy)."""
    if isinstance(prompt, (list, tuple)):
        raise NotImplementedError("--against torch takes one input at a time (npgemma's own "
                                  "batches are checked by its test suite)")
    import npgemma

    from ..generation.backend import Observed
    from ..generation.generate import GenerationConfig, generate_tokens
    from ..generation.slots import Slots

    pipe = npgemma.load(model_dir, backend="torch", device=device, dtype=dtype)  # clear error
    import torch  # without torch

    from ..torch_backend import paligemma as tpg

    tb, cfg = pipe.backend, pipe.cfg
    inputs = pipe.processor(image, prompt)
    ids = inputs.input_ids[None]
    slots = Slots.full(*ids.shape)
    states: list = []
    with torch.inference_mode():
        feats = tpg.encode_image(pipe.params, tb.as_tensor(inputs.pixel_values[None], tb.dtype), cfg)
        logits, _ = tpg.forward(pipe.params, cfg, tb.as_tensor(ids, torch.long),
                                tb.as_tensor(slots.positions(), torch.long),
                                {k: tb.as_tensor(m) for k, m in slots.masks(cfg).items()},
                                feats, hidden_states=states)
    steps: list = []  # the cached decode loop's last-position logits, step by step

    def record(call: str, out) -> None:
        if call != "encode_image":  # forward (the prefill) -> (logits, cache); a step -> logits
            steps.append(tb.to_numpy(out[0] if call == "forward" else out)[0, -1])

    tokens = []
    for t in generate_tokens(Observed(tb, after=record), pipe.params, cfg, ids, inputs.pixel_values[None],
                             GenerationConfig(max_new_tokens=max_new_tokens)):
        if t[0] == cfg.eos_token_id:
            break
        tokens.append(int(t[0]))
    return {"logits": tb.to_numpy(logits)[0], "input_ids": inputs.input_ids,
            "pixel_values": inputs.pixel_values, "token_ids": tokens,
            "hidden_states": [tb.to_numpy(h)[0] for h in states],
            "step_logits": np.stack(steps[:len(tokens)]) if tokens else None}
