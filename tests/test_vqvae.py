"""The mask VQ-VAE in NumPy against an independent implementation built from torch's own
`nn.Conv2d` / `nn.ConvTranspose2d` modules holding the same (random, vae-oid layout) weights;
golden values for the code layout and the padding rule; the loader's errors."""

from __future__ import annotations

import numpy as np
import pytest

from npgemma import vqvae as V
from npgemma.checkpoint.vae_file import load_vae
from npgemma.compare.tolerances import assert_close
from npgemma.errors import InputError, WeightsError
from npgemma.synthetic.vae import FULL, random_vae, vae_shapes, write_vae

SMALL = dict(num_codes=32, code_dim=8, width=16)


# ---- an independent model: torch modules, NCHW, big_vision's architecture spelled out --------

def _module_decoder(vae):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def conv(name, transposed=False, **kw):
        w = torch.from_numpy(vae[name + ".weight"])
        if transposed:
            m = nn.ConvTranspose2d(w.shape[0], w.shape[1], w.shape[2], stride=2, padding=1)
        else:
            m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2, **kw)
        with torch.no_grad():
            m.weight.copy_(w), m.bias.copy_(torch.from_numpy(vae[name + ".bias"]))
        return m

    class Res(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.net = nn.Sequential(conv(name + ".0"), nn.ReLU(), conv(name + ".2"), nn.ReLU(),
                                     conv(name + ".4"))

        def forward(self, x):
            return x + self.net(x)

    layers = [conv("decoder.0"), nn.ReLU(), Res("decoder.2.net"), Res("decoder.3.net")]
    for name in ("decoder.4", "decoder.6", "decoder.8", "decoder.10"):
        layers += [conv(name, transposed=True), nn.ReLU()]
    layers.append(conv("decoder.12"))
    net = nn.Sequential(*layers)
    table = torch.from_numpy(vae["_vq_vae._embedding"])

    def run(codes):
        with torch.no_grad():
            z = table[torch.from_numpy(codes)]                        # [B, 16, D]
            z = z.reshape(len(codes), 4, 4, -1).permute(0, 3, 1, 2)   # row-major grid, NCHW
            return net(z)[:, 0].numpy()
    return run


def test_decoder_matches_torch_modules():
    vae = random_vae(1, **SMALL)
    codes = np.random.default_rng(0).integers(0, 32, size=(3, 16))
    got = V.decode(vae, codes)
    assert got.shape == (3, 64, 64) and got.dtype == np.float32
    assert np.abs(got).max() > 0.1  # not a degenerate all-zero map
    assert_close(got, _module_decoder(vae)(codes), "vqvae", what="decode vs nn modules")


def test_encoder_matches_torch_modules_with_tf_same_padding():
    """4×4 stride-2 SAME pads 1 on each side (nn.Conv2d(padding=1)); 3×3 stride-2 SAME pads 0
    before and 1 after (TF's rule), which nn.Conv2d alone cannot express."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for kernel, pad in ((4, (1, 1, 1, 1)), (3, (0, 1, 0, 1))):
        vae = random_vae(2, encoder_kernel=kernel, **SMALL)
        masks = (np.random.default_rng(kernel).random((2, 64, 64)) > 0.5).astype(np.float32)
        t = lambda k: torch.from_numpy(vae[k])  # noqa: E731
        with torch.no_grad():
            x = 2 * (torch.from_numpy(masks)[:, None] - 0.5)
            for i in range(4):
                x = torch.relu(F.conv2d(F.pad(x, pad), t(f"encoder.{2*i}.weight"), t(f"encoder.{2*i}.bias"), stride=2))
            for r in ("encoder.8.net", "encoder.9.net"):
                h = torch.relu(F.conv2d(x, t(r + ".0.weight"), t(r + ".0.bias"), padding=1))
                h = torch.relu(F.conv2d(h, t(r + ".2.weight"), t(r + ".2.bias"), padding=1))
                x = x + F.conv2d(h, t(r + ".4.weight"), t(r + ".4.bias"))
            want = F.conv2d(x, t("encoder.10.weight"), t("encoder.10.bias")).permute(0, 2, 3, 1).numpy()
        assert_close(V.encode_features(vae, masks), want, "vqvae", what=f"encoder, kernel {kernel}")


@pytest.mark.parametrize("size,kernel,stride,want", [
    (64, 4, 2, (1, 1)), (64, 3, 2, (0, 1)), (5, 3, 2, (1, 1)), (4, 3, 1, (1, 1)), (4, 1, 1, (0, 0)),
    (4, 4, 1, (1, 2))])
def test_same_padding_is_tensorflows_rule(size, kernel, stride, want):
    assert V.same_padding(size, kernel, stride) == want


def test_codes_fill_the_grid_row_major():
    vae = {"_vq_vae._embedding": np.arange(16, dtype=np.float32)[:, None] * [1, -1]}
    grid = V.codebook_lookup(vae, np.arange(16)[None])          # code i -> row i // 4, column i % 4
    assert grid.shape == (1, 4, 4, 2) and grid[0, 1, 3, 0] == 7 and grid[0, 3, 0, 1] == -12


def test_conv_transpose_doubles_and_places_each_input_pixel():
    """One input pixel, a one-hot 4×4 kernel tap (a, b): output pixel (2i - 1 + a, 2j - 1 + b)."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 2, 1, 0] = 1.0
    w = np.zeros((1, 1, 4, 4), np.float32)
    w[0, 0, 3, 0] = 5.0
    out = V.conv_transpose2d(x, w, np.zeros(1, np.float32))
    assert out.shape == (1, 8, 8, 1)
    assert out[0, 2 * 2 - 1 + 3, 2 * 1 - 1 + 0, 0] == 5.0 and np.count_nonzero(out) == 1


def test_nearest_codes_recover_codebook_rows():
    vae = random_vae(3, **SMALL)
    codes = np.random.default_rng(1).integers(0, 32, size=(4, 16))
    feats = V.codebook_lookup(vae, codes) + np.float32(1e-3)
    assert (V.nearest_codes(vae, feats) == codes).all()


def test_encode_decode_shapes_and_code_range():
    vae = random_vae(4, **SMALL)
    codes = V.encode(vae, np.zeros((2, 64, 64)))
    assert codes.shape == (2, 16) and codes.min() >= 0 and codes.max() < 32
    with pytest.raises(InputError, match=r"0\.\.31"):
        V.decode(vae, np.full((1, 16), 32))
    with pytest.raises(InputError, match=r"\[B, 16\]"):
        V.decode(vae, np.zeros((1, 15), np.int64))
    with pytest.raises(InputError, match=r"\[B, 64, 64\]"):
        V.encode(vae, np.zeros((1, 32, 32)))


def test_full_size_file_loads_and_decodes(tmp_path):
    path = tmp_path / "vae-oid.npz"
    write_vae(path, **FULL)
    vae = load_vae(path)
    assert vae["_vq_vae._embedding"].shape == (128, 512) and vae["decoder.10.weight"].shape == (32, 16, 4, 4)
    assert set(vae) == set(vae_shapes(**FULL))
    codes = np.random.default_rng(0).integers(0, 128, size=(2, 16))
    assert_close(V.decode(vae, codes), _module_decoder(vae)(codes), "vqvae", what="full size")


def test_loader_names_the_missing_or_wrong_key(tmp_path):
    good = random_vae(0, **SMALL)
    missing = dict(good)
    del missing["decoder.3.net.2.bias"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(WeightsError, match=r"missing\.npz: missing key 'decoder\.3\.net\.2\.bias'"):
        load_vae(tmp_path / "missing.npz")
    wrong = dict(good, **{"decoder.6.weight": np.zeros((16, 8, 3, 3), np.float32)})
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(WeightsError, match=r"'decoder\.6\.weight' has shape \[16, 8, 3, 3\], expected \[16, \*, 4, 4\]"):
        load_vae(tmp_path / "wrong.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.npz: not an .npz archive"):
        load_vae(tmp_path / "junk.npz")
    with pytest.raises(WeightsError, match="no such VQ-VAE file"):
        load_vae(tmp_path / "absent.npz")
