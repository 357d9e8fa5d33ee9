"""The mask VQ-VAE: NumPy reference vs its torch twin, hypothesis over codes, masks and sizes.

Weights are seeded random in the vae-oid.npz layout (`npgemma.synthetic.vae`), rounded onto the
compute dtype's grid as in the rest of the suite. Codes are drawn freely (any of the K codes in
any of the 16 cells, batch 1-3); sizes cover a non-square code width and both encoder kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from npgemma import vqvae as V  # noqa: E402
from npgemma.compare.tolerances import assert_close  # noqa: E402
from npgemma.synthetic.vae import random_vae  # noqa: E402
from npgemma.torch_backend import vqvae as TV  # noqa: E402
from parity.strategies import SEEDS, on_grid, to_numpy, to_torch  # noqa: E402

SIZES = st.fixed_dictionaries({"num_codes": st.sampled_from([16, 128]),
                               "code_dim": st.sampled_from([4, 12]),
                               "width": st.sampled_from([8, 16]),
                               "encoder_kernel": st.sampled_from([3, 4])})


@given(sizes=SIZES, seed=SEEDS, data=st.data())
@example(sizes={"num_codes": 128, "code_dim": 12, "width": 16, "encoder_kernel": 4}, seed=0,
         data=None)
def test_decode(sizes, seed, data, dtype, device):
    k = sizes["num_codes"]
    if data is None:  # pinned: every cell the last code, then every cell the first
        codes = np.array([[k - 1] * 16, [0] * 16])
    else:
        codes = np.array(data.draw(st.lists(st.lists(st.integers(0, k - 1), min_size=16, max_size=16),
                                            min_size=1, max_size=3)))
    vae = on_grid(random_vae(seed, **sizes), dtype)
    want = V.decode(vae, codes)
    got = TV.decode(to_torch(vae, device, dtype), torch.from_numpy(codes).to(device))
    assert_close(to_numpy(got), want, "vqvae", dtype, "decode")


@given(sizes=SIZES, seed=SEEDS, density=st.floats(0.0, 1.0), batch=st.integers(1, 3))
def test_encode(sizes, seed, density, batch, dtype, device):
    rng = np.random.default_rng(seed)
    masks = (rng.random((batch, 64, 64)) < density).astype(np.float32)
    vae = on_grid(random_vae(seed, **sizes), dtype)
    tvae = to_torch(vae, device, dtype)
    want = V.encode_features(vae, masks)
    got = TV.encode_features(tvae, torch.from_numpy(masks).to(device))
    assert_close(to_numpy(got), want, "vqvae", dtype, "encode_features")
    if dtype == "float32":  # the same features pick the same codebook rows
        feats = want.astype(np.float32)
        assert (to_numpy(TV.nearest_codes(tvae, torch.from_numpy(feats).to(device)))
                == V.nearest_codes(vae, feats)).all()
