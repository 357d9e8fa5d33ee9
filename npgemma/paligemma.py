"""PaliGemma: SigLIP features -> linear projector -> merged into Gemma's input -> logits.

Also the prefix-LM attention mask, which is PaliGemma's own idea: the image tokens, `<bos>`,
the prompt and its "\\n" (the *prefix*) attend to each other bidirectionally; generated tokens
(the *suffix*) are causal and see the whole prefix.
"""

from __future__ import annotations

import numpy as np

from . import gemma, kv_cache, siglip
from .config import PaliGemmaConfig
from .hooks import hook
from .layers import linear


def project(image_features: np.ndarray, linear_params: dict) -> np.ndarray:
    """`PaliGemmaMultiModalProjector`: one Linear with bias, no activation. [B, P, Dv] -> [B, P, D].

    transformers 5.x does not rescale image features (4.x divided them by sqrt(D) and then
    scaled the whole sequence by sqrt(D): the same numbers in float32).
    """
    return hook("projector.hook_out", linear(image_features, **linear_params))


def encode_image(params, pixel_values: np.ndarray, cfg: PaliGemmaConfig,
                 hidden_states: list | None = None) -> np.ndarray:
    """float32[B, 3, S, S] -> image tokens float32[B, P, D] in the decoder's width."""
    feats = siglip.vision_tower(params["vision_tower"], pixel_values, cfg.vision_config, hidden_states)
    return project(feats, params["multi_modal_projector"]["linear"])


def merge(text_embeds: np.ndarray, image_features: np.ndarray, input_ids: np.ndarray,
          image_token_index: int) -> np.ndarray:
    """Put image features, in order, at the `<image>` positions of each row.

    text_embeds float32[B, L, D], image_features float32[B, P, D], input_ids int[B, L].
    Each row must hold exactly P image tokens (HF checks the same and raises).
    """
    is_image = input_ids == image_token_index
    counts = is_image.sum(axis=1)
    if np.any(counts != image_features.shape[1]):
        raise ValueError(f"image tokens per row {counts.tolist()} != {image_features.shape[1]} "
                         "image features: the prompt must hold exactly one image's tokens")
    out = text_embeds.copy()
    out[is_image] = image_features.reshape(-1, image_features.shape[-1])  # row-major = in order
    return out


def prefix_lm_mask(valid: np.ndarray, is_prefix: np.ndarray, q_start: int,
                   sliding_window: int | None = None) -> np.ndarray:
    """bool[B, L, S]: may query slot i (q_start <= i < S) attend to key slot j?

    valid, is_prefix bool[B, S] describe every slot so far (S = q_start + L). Allowed iff key j
    is a real token and either j is not in the future (j <= i, and within the window on
    sliding layers: i - j < window), or i and j are both prefix tokens. As transformers 5.24,
    the prefix is never windowed; generated tokens are. Padding rows stay finite (see layers).

    One row, a pad slot (x), 3 prefix slots (image + prompt, p), 2 generated (g); 1 = may attend:

        key j ->  x p p p g g
        query x   0 0 0 0 0 0     (a pad query sees nothing: its row is never read)
              p   0 1 1 1 0 0     the prefix sees all of the prefix, both ways
              p   0 1 1 1 0 0
              p   0 1 1 1 0 0
              g   0 1 1 1 1 0     a generated token sees the prefix and what came before it
              g   0 1 1 1 1 1
    """
    s = valid.shape[1]
    q = np.arange(q_start, s)[:, None]  # [L, 1]
    k = np.arange(s)[None, :]           # [1, S]
    causal = k <= q
    if sliding_window is not None:
        causal = causal & (q - k < sliding_window)
    both_prefix = is_prefix[:, q_start:, None] & is_prefix[:, None, :]  # [B, L, S]
    return (causal[None] | both_prefix) & valid[:, None, :]


def first_windowed_token(prefix_len: int, window: int | None) -> int | None:
    """The first generated token (1 = the first) whose logits the two authorities for
    Gemma-2's window give differently, for an unpadded prompt of `prefix_len` slots (image
    tokens, <bos>, prompt, "\\n"); None when there is no window. Token n is read from the
    query at slot prefix_len + n - 2; the prefix's own queries are never windowed, a generated
    query at slot i >= window is (key slot 0 is i >= window behind it). So n >= 2 always."""
    if window is None:
        return None
    return max(2, window - prefix_len + 2)


def attention_masks(cfg: PaliGemmaConfig, valid, is_prefix, q_start: int) -> dict:
    """One mask per layer type the decoder has ("full_attention", and for Gemma-2 "sliding_attention").

    The window is the one `cfg.text_config.window` names: transformers 5.24's (above), or
    big_vision's, none at all (its sliding layers then see what the full ones see).
    """
    masks = {"full_attention": prefix_lm_mask(valid, is_prefix, q_start)}
    if cfg.text_config.is_gemma2:
        masks["sliding_attention"] = prefix_lm_mask(valid, is_prefix, q_start,
                                                    cfg.text_config.applied_window)
    return masks


def rope_positions(valid: np.ndarray) -> np.ndarray:
    """int64[B, S]: RoPE position of each slot, counting real tokens only and starting at 1.

    PaliGemma positions are 1-based (HF adds 1 to the usual 0-based ids, prefill and decode).
    Counting only real tokens makes a left-padded row compute exactly what it would alone.
    """
    return np.cumsum(valid, axis=1, dtype=np.int64)


def forward(params, cfg: PaliGemmaConfig, input_ids: np.ndarray, positions: np.ndarray,
            masks: dict, image_features: np.ndarray | None = None, cache=None,
            last_only: bool = False, hidden_states: list | None = None,
            logit_positions=None):
    """The decoder over L new tokens: int[B, L] -> (logits float32[B, L or 1, V], cache).

    image_features float32[B, P, D] (from `encode_image`) replace the `<image>` tokens when
    given (prefill); positions int[B, L]; masks from `attention_masks` for these L queries.
    With a cache, keys/values of the L tokens are appended to it. Logits are computed for the
    last position only (last_only) or for the query indices int[L'] in `logit_positions`: the
    lm_head over every position is [B, L, V] (4.2 GB at 896 px) and rarely wanted.
    """
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


def init_cache(cfg: PaliGemmaConfig, batch: int, max_length: int) -> kv_cache.KVCache:
    """An empty float32 cache for `batch` rows of up to `max_length` slots."""
    t = cfg.text_config
    return kv_cache.init_cache(t.num_hidden_layers, batch, t.num_key_value_heads, max_length, t.head_dim)
