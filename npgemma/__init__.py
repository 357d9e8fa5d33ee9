"""npgemma: PaliGemma (SigLIP -> linear projector -> Gemma) in plain, readable NumPy.

The model is the files beside this one, in reading order: config, layers, siglip, gemma,
paligemma, kv_cache, vqvae (`hooks` are the named points they offer; `_kernels` how the big
products run fast). `torch_backend/` holds the same files in torch. Each other job has a folder:
checkpoint/ (loading), generation/ (running), inspection/, compare/ (parity), cli/, demo/.

Shape alphabet, used in every docstring and `# [..] -> [..]` comment:

    B batch            L query length       S key / cache length
    D width            N query heads        K key/value heads
    H head dim         F MLP width          P patches (image tokens)
    V vocabulary

This module never imports torch: the torch backend loads only when asked for.
"""

__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys

from .config import PaliGemmaConfig  # noqa: E402,F401
from .errors import ConfigError, InputError, NpgemmaError, WeightsError  # noqa: E402,F401

_LAZY = {"load": "pipeline", "Pipeline": "pipeline", "GenerateOutput": "pipeline",
         "load_config": "checkpoint.config_json"}

# Modules that moved into the folders, by their old names: `import npgemma.analysis` and
# `from npgemma.postprocess import parse_objects` keep working, and give the module itself.
MOVED = {"analysis": "inspection.analysis", "postprocess": "generation.postprocess",
         "processing": "generation.processing", "generate": "generation.generate",
         "backend": "generation.backend", "slots": "generation.slots",
         "streaming": "generation.streaming", "weights": "checkpoint.weights",
         "hub": "checkpoint.hub", "memory": "checkpoint.memory", "inspect": "inspection.trace",
         "report": "inspection.report", "tolerances": "compare.tolerances", "against": "compare",
         "parity_report": "compare.stages"}


def __getattr__(name):
    # Lazy: keep `import npgemma` cheap and free of the pipeline's imports.
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    raise AttributeError(f"module 'npgemma' has no attribute {name!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `npgemma.<old name>` (and modules under a moved package) at the new place."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, rest = fullname.partition(".")
        old, _, sub = rest.partition(".")
        if head != __name__ or old not in MOVED:
            return None
        new = f"{__name__}.{MOVED[old]}" + (f".{sub}" if sub else "")
        return importlib.util.spec_from_loader(fullname, self, origin=new)

    _real_specs: dict = {}

    def create_module(self, spec):
        module = importlib.import_module(spec.origin)  # the module itself, under its old name too
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._real_specs.pop(module.__spec__.name)  # the import set the alias's


sys.meta_path.append(_MovedFinder())
