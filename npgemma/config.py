"""PaliGemma configuration: frozen dataclasses with Hugging Face `config.json` field names.

The class defaults below are transformers 5.24.0's (`GemmaConfig`, `SiglipVisionConfig`,
`PaliGemmaConfig`). Reading a `config.json` into these (Gemma2Config's own defaults, the
sub-configs PaliGemma assumes when one is absent, legacy activation names, the checks) is the
loader's job: `npgemma/checkpoint/config_json.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

WINDOWS = ("transformers", "big_vision")  # the two authorities for Gemma-2's sliding window


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (`SiglipVisionConfig`)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True
    projection_dim: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """Gemma (`GemmaConfig`) or Gemma-2 (`Gemma2Config`) decoder; `model_type` tells which."""

    model_type: str = "gemma"
    vocab_size: int = 256000
    hidden_size: int = 3072
    intermediate_size: int = 24576
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 256
    hidden_act: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    # Gemma-2 only (None for Gemma-1).
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    # npgemma's option, not a config.json field: whose Gemma-2 sliding window to run.
    # "transformers" (5.24, the default): generated tokens see at most `sliding_window` slots
    # back, the prefix is never windowed. "big_vision" (Google's training code): no window at
    # all. They differ only once a sequence outgrows the window (docs/numerics.md).
    window: str = "transformers"

    @property
    def is_gemma2(self) -> bool:
        return self.model_type == "gemma2"

    @property
    def query_scale(self) -> float:
        """Attention score scale: Gemma-1 head_dim^-0.5, Gemma-2 query_pre_attn_scalar^-0.5."""
        base = self.query_pre_attn_scalar if self.is_gemma2 else self.head_dim
        return float(base) ** -0.5

    @property
    def applied_window(self) -> int | None:
        """The sliding window as run: the checkpoint's under "transformers", None (full
        attention on every layer) under "big_vision" or for Gemma-1."""
        if not self.is_gemma2 or self.window == "big_vision":
            return None
        return self.sliding_window

    def layer_sliding_window(self, layer_idx: int) -> int | None:
        """The window of one layer as run, or None for full attention."""
        if self.layer_types is None or self.applied_window is None:
            return None
        return self.applied_window if self.layer_types[layer_idx] == "sliding_attention" else None


@dataclass(frozen=True)
class PaliGemmaConfig:
    """The whole model (`PaliGemmaConfig`)."""

    vision_config: VisionConfig
    text_config: TextConfig
    image_token_index: int = 256000
    projection_dim: int = 2048
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0

    @property
    def num_image_tokens(self) -> int:
        return self.vision_config.num_patches


def with_window(cfg: PaliGemmaConfig, window: str) -> PaliGemmaConfig:
    """`cfg` running the given authority's Gemma-2 window (one of WINDOWS)."""
    if window not in WINDOWS:
        from .errors import InputError
        raise InputError(f"window {window!r}: expected one of {', '.join(WINDOWS)}")
    return replace(cfg, text_config=replace(cfg.text_config, window=window))
