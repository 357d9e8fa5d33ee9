"""Where the bundled demo model and its mask VQ-VAE lie: package data of `npgemma.demo`.

`npgemma.load()` with no folder, and every `npgemma` command without `--model`, load these.
Only the paths live here (the loader needs them); what the model is and how it was trained is
`npgemma/demo/`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def model_dir() -> Path:
    """The shipped demo checkpoint folder (inside the installed package)."""
    return Path(str(resources.files("npgemma.demo") / "model"))


def vae_path() -> Path:
    """The shipped demo VQ-VAE (inside the installed package)."""
    return Path(str(resources.files("npgemma.demo") / "vae" / "demo-vae.npz"))
