"""Hypothesis strategies for the NumPy-vs-torch parity suite: tiny configs, shapes and masks.

Strategies draw *specs* — small frozen dataclasses of sizes, scales, a mask layout and a seed —
never arrays element by element: every array is generated from the drawn seed with
`np.random.default_rng(seed)`. Specs print compactly when hypothesis reports a failure, and an
edge case is pinned with `@example(SomeSpec(...))` in a line.

Sizes are tiny on purpose (batch 1-3, lengths 1-9, widths <= 48): the parity of the *math*
does not depend on size, and the default run must stay fast on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from npgemma import paligemma
from npgemma.config import PaliGemmaConfig, TextConfig, VisionConfig

F32 = np.float32
SEEDS = st.integers(0, 2**32 - 1)

# Activation scales: ordinary ones, and the extreme magnitudes (1e2-1e3) that real residual
# streams reach (Gemma's grow to thousands), to catch a float64 promotion, an overflow in a
# low-precision intermediate or a norm computed in the wrong dtype.
NORMAL_SCALES = st.floats(0.05, 4.0, allow_nan=False, allow_infinity=False)
EXTREME_SCALES = st.sampled_from([1e2, 1e3])
SCALES = st.one_of(NORMAL_SCALES, EXTREME_SCALES)
HEAD_DIMS = st.integers(1, 8).map(lambda h: 2 * h)  # even, 2-16 (RoPE rotates halves)
WIDTH_CHOICES = (2, 4, 8, 12, 16, 24, 32)
WIDTHS = st.sampled_from(WIDTH_CHOICES)
EPSILONS = st.sampled_from([1e-6, 1e-5])
THETAS = st.sampled_from([10000.0, 100.0, 1e6])


def normal(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """float32 N(0, scale²) of `shape`."""
    return rng.standard_normal(shape, dtype=F32) * F32(scale)


@st.composite
def gqa_heads(draw) -> tuple[int, int]:
    """(N, K): query heads in {1, 2, 4, 8}, kv heads any divisor — MQA, every GQA ratio, MHA."""
    n = draw(st.sampled_from([1, 2, 4, 8]))
    k = draw(st.sampled_from([d for d in (1, 2, 4, 8) if n % d == 0]))
    return n, k


# --------------------------------------------------------------------------------------------
# Masks: one layout describes every slot of every row; the mask comes from the real builder.

MASK_KINDS = ("bidirectional", "causal", "prefix_lm", "padded", "sliding")


@dataclass(frozen=True)
class MaskSpec:
    """Slots [0, s_len) per row: `pads[b]` left-padding slots, then real tokens, the first
    `prefix[b]` of which are prefix (bidirectional). Queries are the last q_len slots.
    `window` is a sliding window (generated tokens only are windowed, as transformers 5.24)."""

    kind: str
    batch: int
    q_len: int
    s_len: int
    pads: tuple[int, ...]
    prefix: tuple[int, ...]
    window: int | None = None

    @property
    def q_start(self) -> int:
        return self.s_len - self.q_len

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """valid, is_prefix bool[B, S]."""
        s = np.arange(self.s_len)[None]
        pads = np.asarray(self.pads)[:, None]
        valid = s >= pads
        is_prefix = valid & (s < pads + np.asarray(self.prefix)[:, None])
        return valid, is_prefix

    def mask(self) -> np.ndarray:
        """bool[B, L, S] from `paligemma.prefix_lm_mask`, the builder the model uses."""
        valid, is_prefix = self.slots()
        return paligemma.prefix_lm_mask(valid, is_prefix, self.q_start, self.window)

    def positions(self) -> np.ndarray:
        """int64[B, L]: RoPE positions of the query slots (1-based over real tokens)."""
        return paligemma.rope_positions(self.slots()[0])[:, self.q_start:]


@st.composite
def mask_specs(draw, batch: int, q_len: int, s_len: int, kinds=MASK_KINDS) -> MaskSpec:
    kind = draw(st.sampled_from(kinds))
    pads = [0] * batch
    if kind == "padded":
        # Up to s_len - 1 pads: when the queries start at slot 0, a padded row's first query
        # sees no real key at all — the fully masked row that must stay finite.
        pads = [draw(st.integers(0, s_len - 1)) for _ in range(batch)]
        if max(pads) == 0 and s_len > 1:
            pads[draw(st.integers(0, batch - 1))] = draw(st.integers(1, s_len - 1))
    real = [s_len - p for p in pads]
    if kind == "bidirectional":
        prefix = real
    elif kind == "causal":
        prefix = [0] * batch
    else:
        prefix = [draw(st.integers(0, r)) for r in real]
    window = draw(st.integers(1, s_len)) if kind == "sliding" else None
    return MaskSpec(kind, batch, q_len, s_len, tuple(pads), tuple(prefix), window)


# --------------------------------------------------------------------------------------------
# Configs.

@st.composite
def text_configs(draw, gemma2: bool | None = None, num_layers: int = 1,
                 vocab_size: int = 64, min_width: int = 2) -> TextConfig:
    """A tiny Gemma-1 or Gemma-2 decoder config (every GQA ratio, head_dim even 2-16)."""
    n, k = draw(gqa_heads())
    is2 = draw(st.booleans()) if gemma2 is None else gemma2
    h = draw(HEAD_DIMS)
    widths = st.sampled_from([w for w in WIDTH_CHOICES if w >= min_width])
    common = dict(vocab_size=vocab_size, hidden_size=draw(widths), intermediate_size=draw(widths),
                  num_hidden_layers=num_layers, num_attention_heads=n, num_key_value_heads=k,
                  head_dim=h, rms_norm_eps=draw(EPSILONS), rope_theta=draw(THETAS))
    if not is2:
        return TextConfig(model_type="gemma", **common)
    return TextConfig(
        model_type="gemma2", **common,
        query_pre_attn_scalar=draw(st.sampled_from([h, 16, 256])),
        sliding_window=draw(st.integers(1, 6)),
        # Small caps saturate at the small scores of tiny models (the real cap 50 barely acts).
        attn_logit_softcapping=draw(st.sampled_from([None, 0.5, 2.0, 50.0])),
        # Caps that bite (logits of tiny models reach ~10-20) but not far below the logits'
        # scale: the tolerance scales with max|capped logits| <= cap, while the error is that
        # of the pre-cap logits, ~ eps · |h| · |w|. A cap of 1-3 would judge bf16/fp16 logits
        # of scale ~15 against a limit sized for scale 1-3 (seen: fp16, cap 3, 1.3x the limit).
        final_logit_softcapping=draw(st.sampled_from([None, 10.0, 30.0])),
        layer_types=tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                          for i in range(num_layers)))


@st.composite
def vision_configs(draw, num_layers: int = 1, min_width: int = 2) -> VisionConfig:
    """A tiny SigLIP config: 1-4 heads of even head_dim (2-8), patch 2-4, a 1x1 to 3x3 grid."""
    heads = draw(st.sampled_from([1, 2, 4]))
    patch = draw(st.integers(2, 4))
    head_dim = draw(st.sampled_from([h for h in (2, 4, 6, 8) if heads * h >= min_width]))
    return VisionConfig(hidden_size=heads * head_dim,
                        intermediate_size=draw(st.sampled_from(
                            [w for w in WIDTH_CHOICES if w >= min_width])),
                        num_hidden_layers=num_layers,
                        num_attention_heads=heads, image_size=patch * draw(st.integers(1, 3)),
                        patch_size=patch, layer_norm_eps=draw(EPSILONS), vision_use_head=False)


# --------------------------------------------------------------------------------------------
# Weight trees in the canonical layout (`npgemma.checkpoint.layout.unflatten` of the HF keys),
# from a seed.

def linear_params(rng, out_features: int, in_features: int, bias: bool) -> dict:
    """`nn.Linear` weights [out, in] ~ N(0, 1/in) so activations stay O(1); a small bias."""
    p = {"weight": normal(rng, (out_features, in_features), in_features ** -0.5)}
    if bias:
        p["bias"] = normal(rng, (out_features,), 0.1)
    return p


def layer_norm_params(rng, width: int) -> dict:
    return {"weight": F32(1) + normal(rng, (width,), 0.1), "bias": normal(rng, (width,), 0.05)}


def rms_norm_params(rng, width: int) -> dict:
    """Gemma's RMSNorm weight is an offset from 1: small, so that both `1 +` and `w` matter."""
    return {"weight": normal(rng, (width,), 0.1)}


def vision_layer_params(rng, cfg: VisionConfig) -> dict:
    d, f = cfg.hidden_size, cfg.intermediate_size
    return {"layer_norm1": layer_norm_params(rng, d),
            "self_attn": {name: linear_params(rng, d, d, True)
                          for name in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "layer_norm2": layer_norm_params(rng, d),
            "mlp": {"fc1": linear_params(rng, f, d, True), "fc2": linear_params(rng, d, f, True)}}


def decoder_layer_params(rng, cfg: TextConfig) -> dict:
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    n, k = cfg.num_attention_heads, cfg.num_key_value_heads
    p = {"input_layernorm": rms_norm_params(rng, d),
         "self_attn": {"q_proj": linear_params(rng, n * h, d, False),
                       "k_proj": linear_params(rng, k * h, d, False),
                       "v_proj": linear_params(rng, k * h, d, False),
                       "o_proj": linear_params(rng, d, n * h, False)},
         "post_attention_layernorm": rms_norm_params(rng, d),
         "mlp": {"gate_proj": linear_params(rng, f, d, False),
                 "up_proj": linear_params(rng, f, d, False),
                 "down_proj": linear_params(rng, d, f, False)}}
    if cfg.is_gemma2:
        p["pre_feedforward_layernorm"] = rms_norm_params(rng, d)
        p["post_feedforward_layernorm"] = rms_norm_params(rng, d)
    return p


def vision_tower_params(rng, cfg: VisionConfig) -> dict:
    d, p = cfg.hidden_size, cfg.patch_size
    patch = linear_params(rng, d, 3 * p * p, True)
    patch["weight"] = patch["weight"].reshape(d, 3, p, p)  # the conv's OIHW layout
    layers = [vision_layer_params(rng, cfg) for _ in range(cfg.num_hidden_layers)]
    return {"embeddings": {"patch_embedding": patch,
                           "position_embedding": {"weight": normal(rng, (cfg.num_patches, d), 0.5)}},
            "encoder": {"layers": layers},
            "post_layernorm": layer_norm_params(rng, d)}


def paligemma_params(cfg: PaliGemmaConfig, seed: int, tied: bool = True) -> dict:
    """A whole random PaliGemma weight tree: what `weights.unflatten` makes of a checkpoint."""
    rng = np.random.default_rng(seed)
    v, t = cfg.vision_config, cfg.text_config
    tree = {"vision_tower": vision_tower_params(rng, v),
            "multi_modal_projector": {"linear": linear_params(rng, t.hidden_size, v.hidden_size,
                                                              True)},
            # Unit-scale embeddings: logits of O(sqrt(D)), clear top-1 margins for greedy checks.
            "language_model": {
                "embed_tokens": {"weight": normal(rng, (t.vocab_size, t.hidden_size))},
                "layers": [decoder_layer_params(rng, t) for _ in range(t.num_hidden_layers)],
                "norm": rms_norm_params(rng, t.hidden_size)}}
    if not tied:
        tree["lm_head"] = {"weight": normal(rng, (t.vocab_size, t.hidden_size))}
    return tree


def map_tree(fn, tree):
    """Apply `fn` to every leaf of a nested dict/list/tuple tree."""
    if isinstance(tree, dict):
        return {k: map_tree(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tree(fn, v) for v in tree)
    return fn(tree)


# --------------------------------------------------------------------------------------------
# The torch side: casting, and putting shared inputs on the low-precision grid.

def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def on_grid(tree, dtype: str):
    """Round every float array of `tree` to the values `dtype` can hold, kept as float32.

    Both sides then start from *identical* inputs: the torch cast to `dtype` is exact, and the
    NumPy reference computes in float32 on the same numbers (as `NumpyBackend(dtype=...)` does
    with bf16-stored weights). The tolerance table then measures the error of computing in
    `dtype`, not the error of quantising the inputs — which, for an ill-conditioned input like
    a near-tie of attention scores, is the problem's condition number, not the code's fault.
    """
    if dtype == "float32":
        return tree
    import torch

    def rnd(a):
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32):
            return a
        return torch.from_numpy(a).to(torch_dtype(dtype)).float().numpy()

    return map_tree(rnd, tree)


def to_torch(tree, device, dtype: str):
    """float32 arrays -> tensors of `dtype` on `device`; bool/int arrays keep their dtype."""
    import torch

    def conv(a):
        if not isinstance(a, np.ndarray):
            return a
        t = torch.from_numpy(np.ascontiguousarray(a))
        if a.dtype == np.float32:
            return t.to(device=device, dtype=torch_dtype(dtype))
        return t.to(device=device)

    return map_tree(conv, tree)


def to_numpy(t) -> np.ndarray:
    """A torch tensor back as float32 NumPy (exact from bf16/fp16); arrays pass through."""
    if isinstance(t, np.ndarray):
        return t
    return t.detach().float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Specs of the layer tests.

@dataclass(frozen=True)
class ArraySpec:
    """An activation of `shape` ~ N(offset, scale²), from `seed`."""

    shape: tuple[int, ...]
    scale: float
    seed: int
    offset: float = 0.0

    def draw(self, rng=None) -> np.ndarray:
        rng = np.random.default_rng(self.seed) if rng is None else rng
        return normal(rng, self.shape, self.scale) + F32(self.offset)


@st.composite
def array_specs(draw, min_dims: int = 1, max_dims: int = 4, min_last: int = 1,
                scales=SCALES, offsets: bool = False) -> ArraySpec:
    """Leading dims 1-6, the last (reduced / feature) axis min_last-33."""
    dims = draw(st.lists(st.integers(1, 6), min_size=min_dims - 1, max_size=max_dims - 1))
    dims.append(draw(st.integers(min_last, 33)))
    scale = draw(scales)
    # A mean offset of up to 10 standard deviations. LayerNorm's condition number is |mean|/std
    # (it subtracts the mean): float32 round-off of x alone then moves its output by ~10 * 6e-8,
    # well inside the table; at 50 std it would be ~1.5e-5, the size of the tolerance itself.
    offset = draw(st.sampled_from([0.0, 3.0, -10.0])) * scale if offsets else 0.0
    return ArraySpec(tuple(dims), scale, draw(SEEDS), offset)


@dataclass(frozen=True)
class AttentionSpec:
    """q [B, N, L, H], k/v [B, K, S, H], a mask layout, the scale and an optional soft cap.

    `qk_scale` (0.1-3) sets the q and k magnitudes, so the score range; `v_scale` the values'.
    Scores are kept where the comparison is well-conditioned: an error δ in a score moves the
    softmax weights by ~δ, and δ ≈ |score| · eps(dtype). In float32, |scores| reach ~30
    (δ ~ 1e-6); bf16/fp16 round the scores to 8/11 bits, so there q and k are scaled down 3x
    (|scores| up to ~3). Extreme magnitudes go on the values, which attention only averages;
    small caps (0.5, 5) still drive the soft cap into saturation.
    """

    heads: tuple[int, int]
    head_dim: int
    mask: MaskSpec
    qk_scale: float
    v_scale: float
    scale: float
    logit_cap: float | None
    seed: int

    def arrays(self, low_precision: bool = False):
        rng = np.random.default_rng(self.seed)
        (n, k), h, m = self.heads, self.head_dim, self.mask
        qk = self.qk_scale / 3 if low_precision else self.qk_scale
        q = normal(rng, (m.batch, n, m.q_len, h), qk)
        kk = normal(rng, (m.batch, k, m.s_len, h), qk)
        v = normal(rng, (m.batch, k, m.s_len, h), self.v_scale)
        return q, kk, v, m.mask()


@st.composite
def attention_specs(draw) -> AttentionSpec:
    b, l = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    s = l + draw(st.integers(0, 6))  # keys beyond the queries: a filled cache
    h = draw(HEAD_DIMS)
    return AttentionSpec(
        heads=draw(gqa_heads()), head_dim=h, mask=draw(mask_specs(b, l, s)),
        qk_scale=draw(st.floats(0.1, 3.0)), v_scale=draw(SCALES),
        scale=draw(st.sampled_from([h ** -0.5, 144 ** -0.5, 256 ** -0.5])),
        logit_cap=draw(st.sampled_from([None, None, 0.5, 5.0, 50.0])), seed=draw(SEEDS))


@dataclass(frozen=True)
class DecoderLayerSpec:
    """One decoder layer over L new tokens after `mask.q_start` cached ones, cache of
    `mask.s_len + free` slots (free = 0: the layer fills the cache exactly)."""

    cfg: TextConfig
    mask: MaskSpec
    free: int
    x_scale: float
    seed: int


@st.composite
def decoder_layer_specs(draw, gemma2: bool | None = None) -> DecoderLayerSpec:
    # Width >= 8 for whole layers (as for whole models, see paligemma_configs): a width-2
    # residual stream makes ill-conditioned instances (soak, bf16: 1.4x the limit).
    cfg = draw(text_configs(gemma2=gemma2, min_width=8))
    b, l = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    cached = draw(st.integers(0, 5))
    kinds = ("prefix_lm", "padded", "causal", "bidirectional", "sliding")
    m = draw(mask_specs(b, l, l + cached, kinds))
    if cfg.is_gemma2 and m.window is None and draw(st.booleans()):  # the model's window
        m = MaskSpec(m.kind, m.batch, m.q_len, m.s_len, m.pads, m.prefix, cfg.sliding_window)
    return DecoderLayerSpec(cfg, m, draw(st.integers(0, 2)), draw(SCALES), draw(SEEDS))


@dataclass(frozen=True)
class VisionLayerSpec:
    cfg: VisionConfig
    batch: int
    x_scale: float
    seed: int


@st.composite
def vision_layer_specs(draw) -> VisionLayerSpec:
    # Width >= 8: LayerNorm over 2 features is a sign pattern, ±(1, -1) (soak, fp16: 3x the limit).
    return VisionLayerSpec(draw(vision_configs(min_width=8)), draw(st.integers(1, 3)), draw(SCALES),
                           draw(SEEDS))


# --------------------------------------------------------------------------------------------
# Whole-model specs: a tiny PaliGemma and a batch of prompts.

@dataclass(frozen=True)
class ModelSpec:
    """A tiny PaliGemma and a left-padded batch: row b has `text_lens[b]` text tokens after the
    image tokens; shorter rows are left-padded to the longest."""

    cfg: PaliGemmaConfig
    tied: bool
    text_lens: tuple[int, ...]
    seed: int
    pixel_scale: float = 1.0
    decode_steps: int = 1     # tokens decoded after the prefill (layer test) / generated
    free: int = 0             # extra cache slots beyond prefill + decode (0: exactly full)

    @property
    def batch(self) -> int:
        return len(self.text_lens)

    @property
    def prompt_len(self) -> int:
        return self.cfg.num_image_tokens + max(self.text_lens)

    def inputs(self):
        """input_ids int64[B, L], attention_mask int64[B, L], pixel_values float32[B, 3, S, S]."""
        rng = np.random.default_rng(self.seed + 1)
        v, t = self.cfg.vision_config, self.cfg.text_config
        p, L = self.cfg.num_image_tokens, self.prompt_len
        ids = np.zeros((self.batch, L), np.int64)        # pad id 0
        attn = np.zeros((self.batch, L), np.int64)
        for b, n in enumerate(self.text_lens):
            start = L - p - n
            ids[b, start:start + p] = self.cfg.image_token_index
            # Text ids avoid the image token and pad; <bos>=2 first, as the processor writes.
            text = rng.integers(3, min(t.vocab_size, self.cfg.image_token_index), size=n)
            text[0] = self.cfg.bos_token_id
            ids[b, start + p:] = text
            attn[b, start:] = 1
        pixels = normal(rng, (self.batch, 3, v.image_size, v.image_size), self.pixel_scale)
        return ids, attn, pixels


@st.composite
def paligemma_configs(draw, gemma2: bool | None = None, vocab_size: int | None = None,
                      text_layers: int | None = None, vision_layers: int | None = None):
    text_layers = draw(st.integers(1, 2)) if text_layers is None else text_layers
    vision_layers = draw(st.integers(1, 2)) if vision_layers is None else vision_layers
    vocab = draw(st.integers(8, 48)) if vocab_size is None else vocab_size
    # Wider than the layer tests (vision >= 8, text >= 16, MLPs too): narrow ones make
    # ill-conditioned instances, not implementation errors, and they showed up in bf16.
    # LayerNorm of [a, b] is ±(1, -1), so a rounding flip of a ≷ b moves it by O(1); and
    # Gemma-2 normalises each sub-layer's *output*: an MLP of width 2 whose output nearly
    # cancels is mostly rounding noise, which post_feedforward_layernorm scales up to unit size.
    t = draw(text_configs(gemma2=gemma2, num_layers=text_layers, vocab_size=vocab, min_width=16))
    v = draw(vision_configs(num_layers=vision_layers, min_width=8))
    # <image> inside the table (HF pads the vocabulary past it) or just beyond it (read as row 0).
    image_token = draw(st.sampled_from([vocab - 1, vocab]))
    return PaliGemmaConfig(vision_config=v, text_config=t, image_token_index=image_token,
                           projection_dim=t.hidden_size)


@st.composite
def model_specs(draw, gemma2: bool | None = None, max_decode: int = 2, **cfg_kw) -> ModelSpec:
    cfg = draw(paligemma_configs(gemma2=gemma2, **cfg_kw))
    b = draw(st.integers(1, 3))
    lens = tuple(draw(st.integers(1, 5)) for _ in range(b))
    return ModelSpec(cfg, draw(st.booleans()), lens, draw(SEEDS),
                     pixel_scale=draw(st.sampled_from([1.0, 1.0, 0.3])),
                     decode_steps=draw(st.integers(0, max_decode)), free=draw(st.integers(0, 2)))


def tiny_paligemma(text: TextConfig, *, vision: VisionConfig | None = None,
                   image_token_index: int | None = None) -> PaliGemmaConfig:
    """A PaliGemmaConfig around `text` for pinned examples."""
    vision = vision or VisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, image_size=4, patch_size=2,
                                    layer_norm_eps=1e-6, vision_use_head=False)
    tok = text.vocab_size - 1 if image_token_index is None else image_token_index
    return PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=tok,
                           projection_dim=text.hidden_size)


def gemma1(n: int = 4, k: int = 1, layers: int = 2, vocab: int = 32, **kw) -> TextConfig:
    """A pinned tiny Gemma-1 config (MQA by default)."""
    return TextConfig(**(dict(model_type="gemma", vocab_size=vocab, hidden_size=16,
                              intermediate_size=32, num_hidden_layers=layers, num_attention_heads=n,
                              num_key_value_heads=k, head_dim=8, rms_norm_eps=1e-6) | kw))


def gemma2(n: int = 4, k: int = 2, layers: int = 2, vocab: int = 32, **kw) -> TextConfig:
    """A pinned tiny Gemma-2 config: window 2, small soft caps that actually saturate."""
    return TextConfig(**(dict(
        model_type="gemma2", vocab_size=vocab, hidden_size=16, intermediate_size=32,
        num_hidden_layers=layers, num_attention_heads=n, num_key_value_heads=k, head_dim=8,
        rms_norm_eps=1e-6, query_pre_attn_scalar=8, sliding_window=2, attn_logit_softcapping=2.0,
        final_logit_softcapping=10.0,
        layer_types=tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                          for i in range(layers))) | kw))
