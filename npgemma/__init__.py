"""npgemma: PaliGemma (SigLIP -> linear projector -> Gemma) in plain, readable NumPy.

Shape alphabet, used in every docstring and `# [..] -> [..]` comment:

    B batch            L query length       S key / cache length
    D width            N query heads        K key/value heads
    H head dim         F MLP width          P patches (image tokens)
    V vocabulary

This module never imports torch: the torch backend loads only when asked for.
"""

__version__ = "0.1.0"

from .config import PaliGemmaConfig, load_config  # noqa: E402,F401
from .errors import ConfigError, InputError, NpgemmaError, WeightsError  # noqa: E402,F401


def __getattr__(name):
    # Lazy: keep `import npgemma` cheap and free of the pipeline's imports.
    if name in ("load", "Pipeline", "GenerateOutput"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'npgemma' has no attribute {name!r}")
