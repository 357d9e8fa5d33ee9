"""Run an adapter in another Python (a peer's own virtual environment) and bring its arrays back.

    PYTHON remote.py SPEC MODEL_DIR IMAGE.png PROMPT OUT OPTIONS
    PYTHON remote.py SPEC MODEL_DIR '["A.png", ...]' '["prompt a", ...]' OUT OPTIONS  (a batch)

OPTIONS is a JSON object ({"max_new_tokens": 8, "dtype": "bfloat16", "device": "cpu", ...}):
each option FUNC takes (by name or **kwargs) is passed to it as a keyword argument.

This file is run *as a script* by that interpreter, which need not have npgemma installed: it
imports nothing of npgemma, only NumPy, Pillow and the adapter (SPEC: `path/to/file.py:FUNC` or
`pkg.module:FUNC`, the `--against` contract). The adapter's dict comes back as `OUT.npz` (the
arrays) and `OUT.json` (token ids, top logprobs, the hidden-state count), or `OUT.json` with
{"error": ...} and exit status 2 when the adapter cannot be imported or raises: the caller
turns that into one line (a row of the conformance table), never a traceback.
`remote_adapter` is the caller's side.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import traceback

EXIT_ADAPTER_FAILED = 2


def _load(spec: str):
    where, name = spec.rsplit(":", 1)
    here = os.path.dirname(os.path.abspath(__file__))
    # Run as a script, this file's folder heads sys.path: its modules' names (pixels, swap,
    # conform, ...) would shadow the adapter's imports. The current directory takes its place,
    # as `python -m` puts it there.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if where.endswith(".py"):
        # A name of its own: the file may be named after the package it adapts (mlx_vlm).
        loader = importlib.util.spec_from_file_location("_npgemma_remote_adapter", where)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _accepts(func, keyword: str) -> bool:
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)


def _to_numpy(x):
    import numpy as np

    if hasattr(x, "detach"):  # torch
        return x.detach().float().cpu().numpy()
    a = np.asarray(x)  # jax, mlx (via __array__), lists
    return a.astype(np.float32) if a.dtype.kind == "V" or a.dtype.name == "bfloat16" else a


_KEYS = ("logits", "input_ids", "pixel_values", "step_logits", "hidden_states", "token_ids",
         "top_logprobs", "weights")


def _pack(got, arrays: dict, prefix: str) -> dict:
    """One adapter dict into `arrays` (names under `prefix`) and the JSON-able rest."""
    import numpy as np

    if not isinstance(got, dict):
        raise TypeError(f"FUNC returned {type(got).__name__}, expected a dict")
    meta: dict = {}
    for key in ("logits", "input_ids", "pixel_values", "step_logits"):
        if got.get(key) is not None:
            arrays[prefix + key] = _to_numpy(got[key])
    if got.get("hidden_states") is not None:
        meta["hidden_states"] = len(got["hidden_states"])
        arrays |= {f"{prefix}hidden_{i}": _to_numpy(h) for i, h in enumerate(got["hidden_states"])}
    if got.get("token_ids") is not None:
        meta["token_ids"] = [int(t) for t in np.asarray(_to_numpy(got["token_ids"])).reshape(-1)]
    if got.get("top_logprobs") is not None:
        meta["top_logprobs"] = [{str(int(k)): float(v) for k, v in s.items()}
                                for s in got["top_logprobs"]]
    if got.get("weights") is not None:  # {checkpoint key: effective (dequantized) weight}
        meta["weights"] = list(got["weights"])
        arrays |= {f"{prefix}weight_{i}": _to_numpy(w)
                   for i, w in enumerate(got["weights"].values())}
    meta["unknown"] = sorted(set(got) - set(_KEYS))
    return meta


def _main(argv: list[str]) -> int:
    """IMAGE and PROMPT are a JSON list each for a batch (one dict per row comes back)."""
    spec, model_dir, image_arg, prompt_arg, out, options = argv
    meta: dict = {}
    try:
        import numpy as np
        from PIL import Image

        func = _load(spec)
        batch = image_arg.startswith("[")
        paths = json.loads(image_arg) if batch else [image_arg]
        images = []
        for path in paths:
            with Image.open(path) as im:
                images.append(im.copy())  # its own mode (RGB, L, RGBA, P): the adapter converts
        prompt = json.loads(prompt_arg) if batch else prompt_arg
        got = func(model_dir, images if batch else images[0], prompt,
                   **{k: v for k, v in json.loads(options).items() if _accepts(func, k)})
        arrays: dict = {}
        if batch:
            if not isinstance(got, (list, tuple)):
                raise TypeError(f"FUNC returned {type(got).__name__} for a batch, expected a list")
            meta["rows"] = [_pack(row, arrays, f"r{i}_") for i, row in enumerate(got)]
            meta["unknown"] = sorted({k for m in meta["rows"] for k in m["unknown"]})
        else:
            meta = _pack(got, arrays, "")
        np.savez(out + ".npz", **arrays)
    except BaseException as e:  # noqa: BLE001  (everything the adapter can raise becomes a line)
        last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        where = f" at {os.path.basename(last.filename)}:{last.lineno}" if last else ""
        meta = {"error": f"{type(e).__name__}: {e}{where}"}
        if isinstance(e, NotImplementedError):  # a refusal by design, with the adapter's reason
            meta["unsupported"] = str(e)
        with open(out + ".json", "w") as f:
            json.dump(meta, f)
        return EXIT_ADAPTER_FAILED
    with open(out + ".json", "w") as f:
        json.dump(meta, f)
    return 0


def _unpack(meta: dict, got: dict, prefix: str) -> dict:
    hidden = meta.get("hidden_states")
    out = {k: got[prefix + k] for k in ("logits", "input_ids", "pixel_values", "step_logits")
           if prefix + k in got}
    if hidden is not None:
        out["hidden_states"] = [got[f"{prefix}hidden_{i}"] for i in range(hidden)]
    if "token_ids" in meta:
        out["token_ids"] = meta["token_ids"]
    if "top_logprobs" in meta:
        out["top_logprobs"] = [{int(k): v for k, v in s.items()} for s in meta["top_logprobs"]]
    if "weights" in meta:
        out["weights"] = {k: got[f"{prefix}weight_{i}"] for i, k in enumerate(meta["weights"])}
    return out


def remote_adapter(model_dir, image, prompt, *, python: str, spec: str, options: dict,
                   timeout: float | None = None, label: str | None = None):
    """The caller's side: `spec` run by `python`, as an adapter of the `--against` contract;
    `options` (max_new_tokens, dtype, device, attn) reach FUNC as keyword arguments. Past
    `timeout` seconds the child is killed and the call raises `TimedOut`."""
    import subprocess
    import tempfile

    import numpy as np

    from ..errors import InputError, Unsupported
    from .contract import TimedOut

    who = f"--against {label or spec} (in {python})"
    batch = isinstance(image, (list, tuple))
    with tempfile.TemporaryDirectory(prefix="npgemma-remote-") as tmp:
        paths = [os.path.join(tmp, f"image{i}.png") for i in range(len(image) if batch else 1)]
        for path, im in zip(paths, image if batch else [image]):
            im.save(path)
        out = os.path.join(tmp, "out")
        args = [json.dumps(paths), json.dumps(list(prompt))] if batch else [paths[0], prompt]
        try:
            done = subprocess.run([python, os.path.abspath(__file__), spec, os.fspath(model_dir),
                                   *args, out, json.dumps(options)],
                                  capture_output=True, text=True, timeout=timeout or None)
        except FileNotFoundError:
            raise InputError(f"--python {python}: no such interpreter") from None
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child
            raise TimedOut(f"{label or spec} (in {python})", timeout) from None
        if not os.path.isfile(out + ".json"):
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"{who}: the runner failed "
                             f"(exit {done.returncode}): {tail[0]}")
        with open(out + ".json") as f:
            meta = json.load(f)
        if "unsupported" in meta:
            raise Unsupported(f"{who}: not supported by the implementation: {meta['unsupported']}")
        if "error" in meta:
            raise InputError(f"{who}: {meta['error']}")
        if meta["unknown"]:
            raise InputError(f"{who}: unknown keys {meta['unknown']} in FUNC's dict")
        with np.load(out + ".npz") as z:
            got = {k: z[k] for k in z.files}
    if batch:
        return [_unpack(m, got, f"r{i}_") for i, m in enumerate(meta["rows"])]
    return _unpack(meta, got, "")


remote_adapter.remote_timeout = True  # it enforces the timeout itself (contract._called)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
