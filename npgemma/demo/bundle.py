"""The bundled demo model: its PaliGemma-2 config, its tokenizer, and its folder in the HF layout.

The architecture is PaliGemma 2's, scaled down: a SigLIP tower over 64-pixel images in 16-pixel
patches (16 image tokens), the linear projector, and a Gemma-2 decoder with all four norms per
layer, the attention and final softcaps, grouped-query attention and a sliding window (8 slots)
shorter than every prompt, so the window path is exercised on the even layers.

The shipped folder (`npgemma/demo/model/`, package data) is what transformers' own
`PaliGemmaForConditionalGeneration.from_pretrained` reads too: `config.json`,
`model.safetensors` (hub key names), `tokenizer.json` (+ its configs) and
`preprocessor_config.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..checkpoint.weights import disk_name
from ..synthetic.checkpoint import preprocessor_config, tiny_config
from ..synthetic.tokenizer import build_tokenizer, write_tokenizer
from .scenes import IMAGE_SIZE
from .tasks import WORDS

PATCH_SIZE = 16
SLIDING_WINDOW = 8


def demo_tokenizer():
    """The task-vocabulary tokenizer, with PaliGemma's special, `<loc>` and `<seg>` tokens."""
    return build_tokenizer(words=WORDS)


def _vocab_layout() -> tuple[int, int]:
    """(embedding rows, `<image>` id): rows padded to a multiple of 64, as HF pads 257153."""
    image_id = demo_tokenizer().token_to_id("<image>")
    return -(-(image_id + 1) // 64) * 64, image_id


def demo_config(*, hidden_size: int = 192, layers: int = 4, vision_layers: int = 4) -> dict:
    """config.json of the demo model (every transformers default spelled out)."""
    vocab, image_id = _vocab_layout()
    heads, head_dim = 4, hidden_size // 4
    return tiny_config(text="gemma2", minimal=False, num_attention_heads=heads, num_key_value_heads=2,
                       head_dim=head_dim, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                       num_hidden_layers=layers, vision_hidden_size=hidden_size,
                       vision_layers=vision_layers, vision_heads=heads,
                       vision_intermediate=4 * hidden_size, image_size=IMAGE_SIZE,
                       patch_size=PATCH_SIZE, vocab_size=vocab, image_token_index=image_id,
                       sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=head_dim,
                       max_position_embeddings=512)


def write_model(folder: str | os.PathLike, config: dict, flat: dict[str, np.ndarray],
                metadata: dict[str, str] | None = None) -> Path:
    """Write a complete HF-layout checkpoint folder from canonical flat float32 weights."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(config["vision_config"]["image_size"], PATCH_SIZE), indent=2) + "\n")
    tensors = {disk_name(k, "hub"): np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
    write_tokenizer(folder, words=WORDS)
    return folder
