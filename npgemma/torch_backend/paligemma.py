"""Torch twin of `npgemma/paligemma.py`. The masks and positions are built once in NumPy
(`npgemma.paligemma.attention_masks` / `rope_positions`) and arrive here as tensors (a mask
may also be None: no mask), except while decoding, where `decode.py` builds them on the device."""

from __future__ import annotations

import torch

from ..config import PaliGemmaConfig
from ..hooks import hook
from . import gemma, kv_cache, siglip
from .layers import linear


def project(image_features, linear_params) -> torch.Tensor:
    """`PaliGemmaMultiModalProjector`: one Linear with bias. [B, P, Dv] -> [B, P, D]."""
    return hook("projector.hook_out", linear(image_features, **linear_params))


def encode_image(params, pixel_values, cfg: PaliGemmaConfig, hidden_states: list | None = None):
    """[B, 3, S, S] -> image tokens [B, P, D]."""
    feats = siglip.vision_tower(params["vision_tower"], pixel_values, cfg.vision_config, hidden_states)
    return project(feats, params["multi_modal_projector"]["linear"])


def merge(text_embeds, image_features, input_ids, image_token_index: int) -> torch.Tensor:
    """Image features, in order, at the `<image>` positions of each row."""
    is_image = input_ids == image_token_index
    counts = is_image.sum(dim=1)
    if bool((counts != image_features.shape[1]).any()):
        raise ValueError(f"image tokens per row {counts.tolist()} != {image_features.shape[1]} "
                         "image features: the prompt must hold exactly one image's tokens")
    out = text_embeds.clone()
    out[is_image] = image_features.reshape(-1, image_features.shape[-1]).to(out.dtype)
    return out


def forward(params, cfg: PaliGemmaConfig, input_ids, positions, masks: dict, image_features=None,
            cache=None, last_only: bool = False, hidden_states: list | None = None,
            logit_positions=None):
    """The decoder over L new tokens: [B, L] -> (logits [B, L or 1, V], cache); logits only
    for the last position (last_only) or the query indices int[L'] `logit_positions`."""
    text = cfg.text_config
    lm = params["language_model"]
    x = gemma.embed(lm["embed_tokens"], input_ids, text)  # [B, L] -> [B, L, D]
    if image_features is not None:
        x = merge(x, image_features, input_ids, cfg.image_token_index)
    h = gemma.decoder(lm, x, positions, masks, text, cache=cache, hidden_states=hidden_states)
    if cache is not None:
        kv_cache.advance(cache, input_ids.shape[1])
    if last_only:
        h = h[:, -1:]  # [B, L, D] -> [B, 1, D]
    elif logit_positions is not None:
        h = h[:, logit_positions]  # [B, L, D] -> [B, L', D]
    head = params["lm_head"]["weight"] if "lm_head" in params else lm["embed_tokens"]["weight"]
    return gemma.lm_head(h, head, text), cache


def init_cache(cfg: PaliGemmaConfig, batch: int, max_length: int, dtype=torch.float32, device="cpu"):
    """An empty on-device cache for `batch` rows of up to `max_length` slots."""
    t = cfg.text_config
    return kv_cache.init_cache(t.num_hidden_layers, batch, t.num_key_value_heads, max_length,
                               t.head_dim, dtype=dtype, device=device)
