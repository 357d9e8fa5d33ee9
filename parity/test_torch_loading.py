"""`TorchBackend.load_weights` (weights streamed tensor by tensor through
`weights.iter_weights`) gives exactly the tree `from_numpy(load_weights(...))` gives, for every
on-disk dtype, sharded or not, untied heads included; bad files fail the same strict way."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from npgemma.checkpoint.config_json import load_config  # noqa: E402
from npgemma.checkpoint.weights import flatten, iter_weights, load_weights  # noqa: E402
from npgemma.errors import WeightsError  # noqa: E402
from npgemma.synthetic.checkpoint import tiny_config, write_checkpoint  # noqa: E402
from npgemma.torch_backend import TorchBackend  # noqa: E402


@pytest.mark.parametrize("disk,shards,text", [("bfloat16", 1, "gemma"), ("float32", 3, "gemma2"),
                                              ("float16", 2, "gemma")])
def test_streamed_tree_equals_loaded_tree(tmp_path, disk, shards, text, dtype, device):
    folder = write_checkpoint(tmp_path / "ckpt", tiny_config(text=text), dtype=disk,
                              num_shards=shards, seed=3, tokenizer=False)
    cfg = load_config(folder)
    backend = TorchBackend(device=str(device), dtype=dtype)
    streamed = flatten(backend.load_weights(folder, cfg))
    loaded = flatten(backend.from_numpy(load_weights(folder, cfg, dtype=backend.weight_dtype)))
    assert list(streamed) == list(loaded)  # same keys, canonical order
    for key, t in streamed.items():
        assert t.dtype == backend.dtype and t.device.type == device.type, key
        assert torch.equal(t, loaded[key]), key


def test_progress_counts_every_on_disk_byte(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", tiny_config(), dtype="bfloat16", num_shards=2,
                              tokenizer=False)
    calls = []
    keys = [k for k, _ in iter_weights(folder, load_config(folder), dtype=np.float32,
                                       progress=lambda done, total, key: calls.append((done, total)))]
    stored = sum(a.size * 2 for a in flatten(load_weights(folder, load_config(folder))).values())
    assert len(calls) == len(keys) and all(total == stored for _, total in calls)  # bf16: 2 B each
    assert calls[-1][0] == stored and all(b[0] > a[0] for a, b in zip(calls, calls[1:]))

def test_truncated_shard_is_a_weights_error(tmp_path):
    folder = write_checkpoint(tmp_path / "ckpt", tiny_config(), tokenizer=False)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])  # the header still parses; the data is short
    with pytest.raises(WeightsError, match="model.safetensors"):
        TorchBackend().load_weights(folder, load_config(folder))


def test_off_host_device_reads_as_stored_then_casts_there(tmp_path):
    """The path a GPU takes (tensors read in their file dtype, cast on the device), on `meta`:
    same keys, shapes and compute dtype as the CPU tree."""
    folder = write_checkpoint(tmp_path / "ckpt", tiny_config(text="gemma2"), dtype="bfloat16",
                              num_shards=2, tokenizer=False)
    cfg = load_config(folder)
    off = flatten(TorchBackend(device="meta", dtype="float32").load_weights(folder, cfg))
    on = flatten(TorchBackend(device="cpu", dtype="float32").load_weights(folder, cfg))
    assert list(off) == list(on)
    assert all(off[k].device.type == "meta" and off[k].dtype == torch.float32
               and off[k].shape == on[k].shape for k in on)
    stored = dict(iter_weights(folder, cfg, dtype=None))
    assert {a.dtype.name for a in stored.values()} == {"bfloat16"}
