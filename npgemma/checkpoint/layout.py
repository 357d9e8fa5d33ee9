"""Tensor names and shapes: the canonical tree, the four on-disk layouts, and which layout a
folder follows.

The canonical tree mirrors transformers' module names with the wrappers dropped:
`vision_tower.{embeddings,encoder.layers[i],post_layernorm}`, `multi_modal_projector.linear`,
`language_model.{embed_tokens,layers[i],norm}` and, only for untied checkpoints, `lm_head`.
Flat keys are the dotted paths (`language_model.layers.0.mlp.down_proj.weight`).

On disk the same tensors carry one of four prefix sets (`LAYOUTS`). transformers 5.24 renames
each prefix independently when it loads (conversion_mapping.py: the "llava" renames for the
outer prefixes, `PrefixChange(prefix_to_remove="vision_model")` for SigLIP) and undoes only the
renames it applied when it saves, so which of the four a folder holds depends on its history.
"""

from __future__ import annotations

import re

import numpy as np

from ..config import PaliGemmaConfig
from ..errors import WeightsError

# On-disk prefix of each canonical top-level part, per layout (verified against transformers
# 5.24.0's save_pretrained output):
#   hub      4.41-4.51 and the Hub's PaliGemma / PaliGemma-2 repos.
#   v4.52    4.52-4.5x: PaliGemmaModel under `model.`, lm_head at the top.
#   v5       5.x in-memory names (save_pretrained(save_original_format=False)): no `vision_model.`.
#   v5-save  5.x save_pretrained of a freshly built model: hub prefixes, no `vision_model.`.
LAYOUTS = {
    "hub": ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.",
            "language_model.lm_head."),
    "v4.52": ("model.vision_tower.vision_model.", "model.multi_modal_projector.",
              "model.language_model.", "lm_head."),
    "v5": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.",
           "lm_head."),
    "v5-save": ("vision_tower.", "multi_modal_projector.", "language_model.model.",
                "language_model.lm_head."),
}
_PARTS = ("vision_tower.", "multi_modal_projector.", "language_model.", "lm_head.")


def _vision_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """`SiglipVisionTransformer` without its head: embeddings, encoder layers, post_layernorm."""
    v = cfg.vision_config
    dv, fv, p = v.hidden_size, v.intermediate_size, v.patch_size
    out = {
        "vision_tower.embeddings.patch_embedding.weight": (dv, v.num_channels, p, p),  # OIHW
        "vision_tower.embeddings.patch_embedding.bias": (dv,),
        "vision_tower.embeddings.position_embedding.weight": (v.num_patches, dv),
    }
    for i in range(v.num_hidden_layers):
        pre = f"vision_tower.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            out |= {pre + norm + ".weight": (dv,), pre + norm + ".bias": (dv,)}
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            attn = pre + f"self_attn.{proj}."
            out |= {attn + "weight": (dv, dv), attn + "bias": (dv,)}
        out |= {pre + "mlp.fc1.weight": (fv, dv), pre + "mlp.fc1.bias": (fv,),
                pre + "mlp.fc2.weight": (dv, fv), pre + "mlp.fc2.bias": (dv,)}
    return out | {"vision_tower.post_layernorm.weight": (dv,),
                  "vision_tower.post_layernorm.bias": (dv,)}


def _text_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """`GemmaModel` / `Gemma2Model` (four norms per layer), and `lm_head` when untied."""
    t = cfg.text_config
    dt, f, h = t.hidden_size, t.intermediate_size, t.head_dim
    out = {"language_model.embed_tokens.weight": (t.vocab_size, dt)}
    norms = ["input_layernorm", "post_attention_layernorm"]
    if t.is_gemma2:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(t.num_hidden_layers):
        pre = f"language_model.layers.{i}."
        out |= {pre + n + ".weight": (dt,) for n in norms}
        out |= {pre + "self_attn.q_proj.weight": (t.num_attention_heads * h, dt),
                pre + "self_attn.k_proj.weight": (t.num_key_value_heads * h, dt),
                pre + "self_attn.v_proj.weight": (t.num_key_value_heads * h, dt),
                pre + "self_attn.o_proj.weight": (dt, t.num_attention_heads * h),
                pre + "mlp.gate_proj.weight": (f, dt), pre + "mlp.up_proj.weight": (f, dt),
                pre + "mlp.down_proj.weight": (dt, f)}
    out["language_model.norm.weight"] = (dt,)
    if not t.tie_word_embeddings:
        out["lm_head.weight"] = (t.vocab_size, dt)
    return out


def expected_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Flat canonical key -> shape, for every tensor the model needs (in checkpoint order)."""
    dv, dt = cfg.vision_config.hidden_size, cfg.text_config.hidden_size
    projector = {"multi_modal_projector.linear.weight": (dt, dv),
                 "multi_modal_projector.linear.bias": (dt,)}
    return _vision_shapes(cfg) | projector | _text_shapes(cfg)


# The layer index in an on-disk name, under any of the LAYOUTS' prefixes.
_LAYER = {"vision_config": re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\."),
          "text_config": re.compile(r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\.")}


def layer_counts(disk_keys) -> dict[str, int]:
    """{"vision_config": n, "text_config": m}: how many distinct layer indices the on-disk
    names hold, per tower. Costs one pass over the names on disk, whatever config.json says."""
    found: dict[str, set[str]] = {section: set() for section in _LAYER}
    for key in disk_keys:
        for section, pattern in _LAYER.items():
            m = pattern.search(key)
            if m:
                found[section].add(m.group(1))
    return {section: len(indices) for section, indices in found.items()}


def vision_head_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """SigLIP's attention-pooling head (`SiglipMultiheadAttentionPoolingHead`): transformers
    builds and saves it whenever a vision_config dict leaves `vision_use_head` at its
    SiglipVisionConfig default (true), but PaliGemma never runs it, so it is never loaded."""
    dv, fv = cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size
    shapes = {"probe": (1, 1, dv), "attention.in_proj_weight": (3 * dv, dv),
              "attention.in_proj_bias": (3 * dv,), "attention.out_proj.weight": (dv, dv),
              "attention.out_proj.bias": (dv,), "layernorm.weight": (dv,),
              "layernorm.bias": (dv,), "mlp.fc1.weight": (fv, dv), "mlp.fc1.bias": (fv,),
              "mlp.fc2.weight": (dv, fv), "mlp.fc2.bias": (dv,)}
    return {"vision_tower.head." + k: s for k, s in shapes.items()}


def droppable_shapes(cfg: PaliGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Tensors accepted on disk (shape-checked) but never read: the vision pooling head and a
    tied lm_head (a copy of embed_tokens that some converters store)."""
    out = vision_head_shapes(cfg)
    t = cfg.text_config
    if t.tie_word_embeddings:
        out["lm_head.weight"] = (t.vocab_size, t.hidden_size)
    return out


def disk_name(key: str, layout: str) -> str:
    """The on-disk name of canonical `key` in `layout`."""
    for part, prefix in zip(_PARTS, LAYOUTS[layout]):
        if key.startswith(part):
            return prefix + key[len(part):]
    raise KeyError(key)


def disk_names(keys, layout: str) -> dict[str, str]:
    """{disk name in `layout`: canonical key} for `keys`."""
    return {disk_name(k, layout): k for k in keys}


def pick_layout(disk_keys, wanted) -> str:
    """The layout whose names explain the most on-disk keys, among the canonical `wanted`."""
    def explained(layout: str) -> int:
        names = disk_names(wanted, layout)
        return sum(k in names for k in disk_keys)
    return max(LAYOUTS, key=explained)


def flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts / lists -> {dotted key: array}; list items are keyed by their index."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix[:-1]: tree}
    out = {}
    for k, v in items:
        out |= flatten(v, f"{prefix}{k}.")
    return out


def unflatten(flat: dict[str, np.ndarray]):
    """{dotted key: array} -> nested dicts; every level named "layers" becomes a list."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return _lists_for_layers(tree)


def _lists_for_layers(node):
    if not isinstance(node, dict):
        return node
    out = {k: _lists_for_layers(v) for k, v in node.items()}
    if isinstance(out.get("layers"), dict):
        layers = out["layers"]
        if sorted(layers, key=lambda s: (len(s), s)) != [str(i) for i in range(len(layers))]:
            raise WeightsError(f"layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
        out["layers"] = [layers[str(i)] for i in range(len(layers))]
    return out
