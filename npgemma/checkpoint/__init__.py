"""Loading a checkpoint: a folder or model id -> config, weights, the mask VQ-VAE; will it fit?

    config_json.py  config.json -> PaliGemmaConfig (transformers' defaults, strict checks)
    weights.py      load_weights / iter_weights: the weight tree, strict, all problems at once
    layout.py       canonical names and shapes, the four key layouts found on disk
    checks.py       validation against config.json and the shard index
    read.py         safetensors files, headers, tensors (read, memory-mapped or streamed)
    problems.py     every problem in one WeightsError
    finite.py       NaN/Inf in a weight, found as it is read or first used
    hub.py          model ids in the local Hugging Face cache
    estimate.py     the bytes a run needs, from config.json alone
    machine.py      the memory this machine has (RAM, cgroups, GPU)
    memory.py       will it fit: the check and its verdict in words
    vae_file.py     PaliGemma's mask VQ-VAE file (vae-oid.npz)
    bundled.py      where the bundled demo model and its VQ-VAE lie
"""

from .config_json import config_from_dict, load_config  # noqa: F401
from .layout import LAYOUTS, expected_shapes, flatten, unflatten  # noqa: F401
from .vae_file import load_vae  # noqa: F401
from .weights import header_summary, iter_weights, load_weights  # noqa: F401
