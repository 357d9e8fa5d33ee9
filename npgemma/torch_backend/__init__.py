"""The PyTorch backend: the NumPy reference's files again, in torch, on CPU or CUDA.

`layers.py siglip.py gemma.py paligemma.py kv_cache.py vqvae.py` are the twins of the NumPy
files of the same names: the same functions, the same parameter names (`parity/test_mirror.py`
checks it). What only the device side needs: `backend.py` (TorchBackend: weights to the
device, kept caches, decode modes) and `decode.py` (the on-device decode state and the
CUDA-graph step).
"""

from .backend import TorchBackend, tensor_from_numpy  # noqa: F401

__all__ = ["TorchBackend", "tensor_from_numpy"]
