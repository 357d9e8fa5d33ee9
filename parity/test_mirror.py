"""The torch backend mirrors the NumPy reference file by file: same public functions, same
parameter names in the same order, same kinds (positional / keyword-only) and defaults.

The rule, exactly:
  * every public function (or class) *defined* in `npgemma/<m>.py` exists in
    `npgemma/torch_backend/<m>.py`, and vice versa — except the names listed in NUMPY_ONLY /
    TORCH_ONLY below, each with its reason;
  * the torch signature starts with the NumPy signature: same names, order, kinds, and the same
    defaults (a `dtype` / `device` default may differ: np.float32 vs torch.float32);
  * after that the torch side may only ADD trailing optional parameters named `dtype` or
    `device` — where tensors are created and the NumPy side has a fixed float32 / CPU;
  * dataclasses (the KV-cache) have the same fields in the same order.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

pytest.importorskip("torch")

MODULES = ("layers", "siglip", "gemma", "paligemma", "kv_cache", "vqvae")
TORCH_EXTRAS = ("dtype", "device")

# Names deliberately on one side only.
NUMPY_ONLY = {
    # Data-independent tensors are built once in NumPy and handed to the backend
    # (npgemma/generation/slots.py); the torch twin receives them as tensors.
    "paligemma": {"prefix_lm_mask", "attention_masks", "rope_positions",
                  # Where the two window authorities part: integer arithmetic on a config's
                  # numbers (docs/conformance.md's table), no tensor on either side.
                  "first_windowed_token"},
    # The TF "SAME" padding rule is plain integer arithmetic, imported by the twin. (The
    # VQ-VAE file is read once, by npgemma/checkpoint/vae_file.py, and handed to a backend.)
    "vqvae": {"same_padding"},
}
TORCH_ONLY = {
    # The twin of the NumPy constant MASK_VALUE: torch needs the finfo.min of the compute dtype.
    # attention_bias: a bool mask as the additive bias torch's fused kernel takes (NumPy masks
    # the scores in place).
    "layers": {"mask_value", "attention_bias"},
}


def _public(module) -> dict[str, object]:
    """Public functions and classes defined in `module` itself (not imported into it)."""
    return {name: obj for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__}


def _pair(name):
    return (importlib.import_module(f"npgemma.{name}"),
            importlib.import_module(f"npgemma.torch_backend.{name}"))


@pytest.mark.parametrize("name", MODULES)
def test_same_public_names(name):
    ref, twin = _pair(name)
    ref_names, twin_names = set(_public(ref)), set(_public(twin))
    numpy_only, torch_only = NUMPY_ONLY.get(name, set()), TORCH_ONLY.get(name, set())
    assert numpy_only <= ref_names and torch_only <= twin_names, "stale allow-list entry"
    missing = ref_names - twin_names - numpy_only
    extra = twin_names - ref_names - torch_only
    assert not missing, f"torch_backend/{name}.py lacks {sorted(missing)} (defined in {name}.py)"
    assert not extra, f"torch_backend/{name}.py adds {sorted(extra)}, absent from {name}.py"


def _params(fn):
    return list(inspect.signature(fn).parameters.values())


def mirror_problems(fname: str, a, b) -> list[str]:
    """How the torch twin `b` of the NumPy function (or dataclass) `a` breaks the rule."""
    if inspect.isclass(a):
        fields = [[f.name for f in dataclasses.fields(c)] if dataclasses.is_dataclass(c) else None
                  for c in (a, b)]
        return [] if fields[0] == fields[1] else [f"{fname}: fields {fields[0]} vs {fields[1]}"]
    problems = []
    pa, pb = _params(a), _params(b)
    for p, q in zip(pa, pb):
        if (p.name, p.kind) != (q.name, q.kind):
            problems.append(f"{fname}: parameter {p.name} ({p.kind.description}) vs "
                            f"{q.name} ({q.kind.description})")
        elif p.name not in TORCH_EXTRAS and p.default != q.default:
            problems.append(f"{fname}({p.name}=...): default {p.default!r} vs {q.default!r}")
    if len(pb) < len(pa):
        problems.append(f"{fname}: torch lacks {[p.name for p in pa[len(pb):]]}")
    for q in pb[len(pa):]:
        if q.name not in TORCH_EXTRAS or q.default is inspect.Parameter.empty:
            problems.append(f"{fname}: torch adds {q.name!r}; only trailing optional "
                            f"{'/'.join(TORCH_EXTRAS)} parameters may be added")
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_same_signatures(name):
    ref, twin = _pair(name)
    ref_pub, twin_pub = _public(ref), _public(twin)
    problems = [p for fname in sorted(set(ref_pub) & set(twin_pub))
                for p in mirror_problems(fname, ref_pub[fname], twin_pub[fname])]
    assert not problems, f"{name}.py vs torch_backend/{name}.py:\n  " + "\n  ".join(problems)


def test_rule_catches_a_drift():
    """The checker itself: renamed, reordered, re-kinded, re-defaulted, dropped or added
    parameters are reported; trailing optional dtype/device are not."""
    def ref(x, weight, bias=None, *, eps=1e-6): ...
    def allowed(x, weight, bias=None, *, eps=1e-6, dtype=None, device="cpu"): ...
    def renamed(x, w, bias=None, *, eps=1e-6): ...
    def reordered(weight, x, bias=None, *, eps=1e-6): ...
    def rekinded(x, weight, bias=None, eps=1e-6): ...
    def redefaulted(x, weight, bias=None, *, eps=1e-5): ...
    def dropped(x, weight, bias=None): ...
    def added(x, weight, bias=None, *, eps=1e-6, scale=1.0): ...
    def required_dtype(x, weight, bias=None, *, eps=1e-6, dtype): ...
    assert mirror_problems("f", ref, allowed) == []
    for bad in (renamed, reordered, rekinded, redefaulted, dropped, added, required_dtype):
        assert mirror_problems("f", ref, bad), bad.__name__
