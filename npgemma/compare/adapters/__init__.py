"""Every built-in adapter, one registry (`BUILTINS`), and resolving `--against SPEC` to a call.

SPEC is a built-in's name (below), `openai:URL`, `PKG.MODULE:FUNC` (imported as `python -m`
would: the current directory first, no PYTHONPATH needed) or `path/to/file.py:FUNC`. Built-ins
that run "here" are imported into this process; those that run in their "own venv" are files
beside this one, run by `remote.py` in the interpreter `--python` names, each with the setup
script that builds that environment. Every FUNC receives the request's `max_new_tokens`,
`dtype`, `device` and `attn` as keyword arguments, each one it takes (by name or **kwargs).
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

from ...errors import InputError

HERE = os.path.dirname(os.path.abspath(__file__))
OPTIONS = ("max_new_tokens", "dtype", "device", "attn")


@dataclass(frozen=True)
class Builtin:
    name: str
    what: str
    target: str                # "<npgemma module>:FUNC" (runs here) or "FILE.py:FUNC" beside this file
    own_venv: bool = False     # runs in the peer's own interpreter (--python), via remote.py
    setup: str | None = None   # the script that builds that interpreter's environment, beside this file

    def spec(self) -> str:
        """The target as `resolve` loads it (a file beside this one by its full path)."""
        return os.path.join(HERE, self.target) if self.own_venv else self.target

    def setup_path(self) -> str | None:
        return None if self.setup is None else os.path.join(HERE, self.setup)


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("torch", "npgemma's own torch backend (prefix logits, hidden states, greedy steps)",
            "npgemma.compare.adapters.torch_adapter:torch_adapter"),
    Builtin("transformers", "the installed Hugging Face transformers (the oracle: 5.24.0)",
            "npgemma.compare.adapters.transformers_adapter:transformers_adapter"),
    Builtin("openai", "a server with an OpenAI-compatible API: openai:URL",
            "npgemma.compare.adapters.openai_adapter:openai_adapter"),
    Builtin("keras-hub", "keras-hub's PaliGemma (Keras 3 on JAX), in its own venv",
            "keras_hub_adapter.py:run", own_venv=True, setup="setup_keras_hub.sh"),
    Builtin("mlx-vlm", "mlx-vlm's PaliGemma (MLX), in its own venv",
            "mlx_vlm_adapter.py:run", own_venv=True, setup="setup_mlx_vlm.sh"),
    Builtin("mlx-vlm-4bit", "mlx-vlm on its own 4-bit conversion (mlx_vlm.convert, group 64); "
            "returns its dequantized weights", "mlx_vlm_quant_adapter.py:run4", own_venv=True,
            setup="setup_mlx_vlm.sh"),
    Builtin("mlx-vlm-8bit", "mlx-vlm on its own 8-bit conversion (mlx_vlm.convert, group 64); "
            "returns its dequantized weights", "mlx_vlm_quant_adapter.py:run8", own_venv=True,
            setup="setup_mlx_vlm.sh"),
    *(Builtin(f"transformers-{k}", f"transformers 5.24 with {what} on the CPU; returns its "
              "dequantized weights", f"transformers_quant_adapter.py:run_{k.replace('-', '_')}",
              own_venv=True, setup="setup_transformers_quant.sh")
      for k, what in (("torchao-int8", "torchao Int8WeightOnlyConfig"),
                      ("quanto-int8", "optimum-quanto int8 weights"),
                      ("bnb-nf4", "bitsandbytes NF4"), ("bnb-fp4", "bitsandbytes FP4"))),
    # transformers at a past release, in a venv of its own (docs/conformance-runs/).
    Builtin("transformers-legacy", "transformers at an older version, in its own venv",
            "transformers_legacy_adapter.py:run", own_venv=True,
            setup="setup_transformers_legacy.sh"),
)}


def _import_module(where: str):
    """`where` imported as `python -m` would find it: the current directory ahead of the rest."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def load_func(spec: str) -> Callable:
    if ":" not in spec:
        raise InputError(f"--against {spec}: expected PKG.MODULE:FUNC, path/to/file.py:FUNC or "
                         f"one of {', '.join(BUILTINS)}")
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
            module = _import_module(where)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--against {spec}: cannot import {where} ({type(e).__name__}: {e})") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise InputError(f"--against {spec}: {where} has no function {name!r}")
    return func


def accepts(func: Callable, keyword: str) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)


def options(request) -> dict:
    """The request's options every adapter may receive as keyword arguments."""
    return {k: getattr(request, k) for k in OPTIONS}


def _bound(func: Callable, opts: dict, **extra) -> Callable:
    given = {k: v for k, v in opts.items() if accepts(func, k)}
    return functools.partial(func, **given, **extra)


def resolve(request) -> Callable:
    """`request.against` -> FUNC(model_dir, image, prompt) -> dict, its options bound."""
    spec, python = request.against, request.python
    builtin = BUILTINS.get(spec)
    opts = options(request)
    if (builtin is not None and builtin.own_venv) or python is not None:
        if spec.startswith("openai:") or (builtin is not None and not builtin.own_venv):
            raise InputError(f"--python runs a file or module adapter (or "
                             f"{', '.join(n for n, b in BUILTINS.items() if b.own_venv)}) in "
                             f"another interpreter; {spec!r} runs in this one")
        from ..remote import remote_adapter

        target = builtin.spec() if builtin is not None else spec
        if ":" not in target:
            raise InputError(f"--against {spec}: expected PKG.MODULE:FUNC or path/to/file.py:FUNC")
        where = target.rsplit(":", 1)[0]
        if where.endswith(".py") and not os.path.isfile(where):
            if builtin is not None:
                raise InputError(f"--against {spec}: its adapter {builtin.target} is not in this "
                                 f"copy of npgemma ({HERE})")
            raise InputError(f"--against {spec}: no such file {where}")
        return functools.partial(remote_adapter, python=python or sys.executable, spec=target,
                                 options=opts, timeout=request.timeout, label=spec)
    if spec.startswith("openai:"):
        return _bound(load_func(BUILTINS["openai"].target), opts, url=spec[len("openai:"):])
    return _bound(load_func(builtin.target if builtin is not None else spec), opts)
