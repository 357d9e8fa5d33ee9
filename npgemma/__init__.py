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

import importlib  # noqa: E402

from .config import PaliGemmaConfig  # noqa: E402,F401
from .errors import ConfigError, InputError, NpgemmaError, WeightsError  # noqa: E402,F401

_LAZY = {"load": "pipeline", "Pipeline": "pipeline", "GenerateOutput": "pipeline",
         "load_config": "checkpoint.config_json"}


def __getattr__(name):
    # Lazy: keep `import npgemma` cheap and free of the pipeline's imports.
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'npgemma' has no attribute {name!r}")

