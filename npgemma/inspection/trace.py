"""`Pipeline.trace`: one greedy generation with named activations kept, stitched over the steps.

Hook names (TransformerLens style) and their stitched shapes, for a prompt of L tokens (image
tokens included) and T generated tokens; S = L + T - 1 is every position a query ran at (the
last generated token is never fed back), P the image patches, g = sqrt(P) the patch grid:

    vision.blocks.{l}.hook_resid_post          [B, P, Dv]    output of SigLIP layer l
    vision.blocks.{l}.attn.hook_scores         [B, Nv, P, P] q·kᵀ × scale (before softmax)
    vision.blocks.{l}.attn.hook_pattern        [B, Nv, P, P] softmaxed attention weights
    projector.hook_out                         [B, P, D]     image tokens in the decoder's width
    decoder.blocks.{l}.hook_resid_pre          [B, S, D]     input of decoder layer l
    decoder.blocks.{l}.hook_resid_mid          [B, S, D]     after the attention residual add
    decoder.blocks.{l}.hook_resid_post         [B, S, D]     output of layer l (before the final norm)
    decoder.blocks.{l}.attn.hook_q / hook_k    [B, N|K, S, H] queries / keys after RoPE
    decoder.blocks.{l}.attn.hook_scores        [B, N, S, S]  q·kᵀ × scale, before the soft cap and mask
    decoder.blocks.{l}.attn.hook_scores_capped [B, N, S, S]  after Gemma-2's soft cap, before the mask
    decoder.blocks.{l}.attn.hook_pattern       [B, N, S, S]  softmaxed weights (masked keys exactly 0)
    decoder.blocks.{l}.mlp.hook_post           [B, S, F]     gelu(gate) * up, the MLP's hidden activation
    unembed.hook_logits                        [B, S-L+1, V] the logits each generated token came from

Attention arrays are one row per query head (head n reads kv head n // (N / K)), as transformers'
`output_attentions`. The prefill gives rows 0..L-1, decode step t row L-1+t; entries a step
never computed (keys after its query) are 0 in patterns, NaN in scores. Row L-1+t is the query
that *produced* generated token t.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checkpoint.machine import available_memory
from ..checkpoint.read import checkpoint_hash
from ..errors import InputError
from ..generation.backend import Observed
from ..generation.generate import GenerationConfig, generate_tokens
from ..hooks import ATTENTION_HOOKS as ATTENTION
from ..hooks import capturing
from .capture import Capture


def hook_shapes(cfg, prompt_len: int, new_tokens: int, batch: int = 1) -> dict[str, tuple]:
    """Every hook name this config has -> its stitched shape (the table in the docstring)."""
    v, t = cfg.vision_config, cfg.text_config
    p, s = cfg.num_image_tokens, prompt_len + max(new_tokens, 1) - 1
    out = {}
    for i in range(v.num_hidden_layers):
        pre = f"vision.blocks.{i}."
        out[pre + "hook_resid_post"] = (batch, p, v.hidden_size)
        out[pre + "attn.hook_scores"] = (batch, v.num_attention_heads, p, p)
        out[pre + "attn.hook_pattern"] = (batch, v.num_attention_heads, p, p)
    out["projector.hook_out"] = (batch, p, t.hidden_size)
    for i in range(t.num_hidden_layers):
        pre = f"decoder.blocks.{i}."
        for r in ("pre", "mid", "post"):
            out[pre + f"hook_resid_{r}"] = (batch, s, t.hidden_size)
        out[pre + "attn.hook_q"] = (batch, t.num_attention_heads, s, t.head_dim)
        out[pre + "attn.hook_k"] = (batch, t.num_key_value_heads, s, t.head_dim)
        out[pre + "attn.hook_scores"] = (batch, t.num_attention_heads, s, s)
        if t.attn_logit_softcapping is not None:
            out[pre + "attn.hook_scores_capped"] = (batch, t.num_attention_heads, s, s)
        out[pre + "attn.hook_pattern"] = (batch, t.num_attention_heads, s, s)
        out[pre + "mlp.hook_post"] = (batch, s, t.intermediate_size)
    out["unembed.hook_logits"] = (batch, max(new_tokens, 1), t.vocab_size)
    return out


def check_fits(cap: Capture, shapes: dict[str, tuple]) -> int:
    """Bytes the selection will keep (float32; stitching briefly holds a second copy); an
    InputError naming the total and the budget when that exceeds the memory available
    (`checkpoint.machine.available_memory`: MemAvailable, or a cgroup's headroom when tighter)."""
    total = 0
    for name, shape in shapes.items():
        if cap.wants(name):
            n = int(np.prod(shape))
            if cap.heads is not None and (name.endswith(ATTENTION) or name.endswith("attn.hook_q")):
                n = n * len(cap.heads) // shape[1]
            total += 4 * n
    avail = available_memory()
    budget = None if avail is None else avail.bytes
    if budget is not None and 2 * total > budget:
        raise InputError(f"trace: the selected activations need about {2 * total / 2**30:.2f} GiB "
                         f"(float32, with the stitching copy) but {budget / 2**30:.2f} GiB is "
                         f"available ({avail.source}); select fewer with names=[glob, ...], "
                         "layers= or heads= "
                         "(e.g. names=['decoder.blocks.*.attn.hook_pattern'])")
    return total


def stitch(name: str, steps: list[list[np.ndarray]]) -> np.ndarray:
    """Pieces of one hook, per step (vision / prefill / decode steps) -> one array."""
    if name.endswith(ATTENTION):
        per_step = [np.concatenate(p, axis=2) for p in steps]  # query chunks of one step
        rows = sum(a.shape[2] for a in per_step)
        b, n = per_step[0].shape[:2]
        out = np.full((b, n, rows, rows), 0.0 if name.endswith("hook_pattern") else np.nan, np.float32)
        r = 0
        for i, a in enumerate(per_step):
            # A decode step's keys after its own query are empty cache slots (a device backend
            # attends over the whole fixed-size cache, masked): not part of the matrix.
            cols = min(a.shape[3], rows if i == 0 else r + a.shape[2])
            out[:, :, r:r + a.shape[2], :cols] = a[..., :cols]
            r += a.shape[2]
        return out
    axis = 2 if name.endswith(("attn.hook_q", "attn.hook_k")) else 1
    return np.concatenate([a for p in steps for a in p], axis=axis)


@dataclass
class Trace:
    """A traced generation: the answer and every activation kept, by hook name."""

    token_ids: list[int]               # the generated ids, EOS excluded (as `generate`)
    text: str                          # `generate`'s text for the same input
    input_ids: np.ndarray              # int64[L]: the prompt, image tokens included
    tokens: list[str]                  # token strings of input_ids + generated ids
    grid: int                          # the image is grid x grid patches
    image_token_index: int
    bos_token_id: int
    pixel_values: np.ndarray           # float32[3, S, S], what the vision tower saw
    checkpoint_hash: str | None = None
    pieces: dict = field(default_factory=dict, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return sorted(set(self.pieces) | set(self._arrays))

    def __contains__(self, name: str) -> bool:
        return name in self.pieces or name in self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            if name not in self.pieces:
                raise KeyError(f"{name!r} was not captured; captured: {', '.join(self.names[:6])}"
                               f"{' ...' if len(self.names) > 6 else ''}")
            self._arrays[name] = stitch(name, list(self.pieces.pop(name).values()))
        return self._arrays[name]

    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)

    def manifest(self) -> dict:
        return {"names": {n: list(self[n].shape) for n in self.names}, "tokens": self.tokens,
                "token_ids": self.token_ids, "text": self.text,
                "input_ids": self.input_ids.tolist(), "grid": self.grid,
                "image_token_index": self.image_token_index, "bos_token_id": self.bos_token_id,
                "checkpoint_hash": self.checkpoint_hash}

    def save(self, path) -> tuple[Path, Path]:
        """`path`.npz (one array per name, plus pixel_values) and `path`.json (the manifest)."""
        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
        npz, manifest = base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")
        try:
            np.savez(npz, pixel_values=self.pixel_values, **{n: self[n] for n in self.names})
            manifest.write_text(json.dumps(self.manifest(), indent=1))
        except OSError as e:
            raise InputError(f"trace.save {path}: cannot write ({e.strerror})") from None
        return npz, manifest

    @classmethod
    def load(cls, path) -> "Trace":
        """A saved trace back (its arrays, manifest and pixels)."""
        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".npz", ".json") else base
        m = json.loads(base.with_name(base.name + ".json").read_text())
        with np.load(base.with_name(base.name + ".npz")) as z:
            arrays = {n: z[n] for n in z.files}
        return cls(token_ids=m["token_ids"], text=m["text"], input_ids=np.asarray(m["input_ids"]),
                   tokens=m["tokens"], grid=m["grid"], image_token_index=m["image_token_index"],
                   bos_token_id=m["bos_token_id"], pixel_values=arrays.pop("pixel_values"),
                   checkpoint_hash=m["checkpoint_hash"], _arrays=arrays)


def trace(pipe, image, prompt: str, names=None, layers=None, heads=None,
          max_new_tokens: int = 32, model_dir=None, on_token=None) -> Trace:
    """Greedy generation of `prompt` on `image` with the selected activations kept.

    names: fnmatch globs over hook names (None: all of them, after a memory check); layers /
    heads: indices to keep (None: all). The answer is `pipe.generate`'s, bit for bit.
    `on_token(1)` is called as each token arrives (a progress bar's update).
    """
    if isinstance(names, str):
        names = [names]
    cfg = pipe.cfg
    inputs = pipe.processor(image, prompt)
    shapes = hook_shapes(cfg, len(inputs.input_ids), max_new_tokens)
    cap = Capture(names, layers, heads, {"vision": cfg.vision_config.num_attention_heads,
                                                 "decoder": cfg.text_config.num_attention_heads})
    if names is not None and not any(cap.wants(n) for n in shapes):
        raise InputError(f"trace: names {names} match no hook; names look like "
                         "'decoder.blocks.3.attn.hook_pattern' (see npgemma.inspection.trace)")
    check_fits(cap, shapes)
    steps = iter(range(1, 1 << 62))

    def name_step(call: str) -> None:  # which step each piece the capture keeps belongs to
        cap.step = {"encode_image": "vision", "forward": "prefill"}.get(call) or f"step{next(steps)}"

    # eager: a replayed CUDA graph runs no Python, so its hooks would not fire.
    backend = Observed(pipe.backend, before=name_step, eager=True)
    ids: list[int] = []
    with capturing(cap):
        for token in generate_tokens(backend, pipe.params, cfg, inputs.input_ids[None],
                                     inputs.pixel_values[None],
                                     GenerationConfig(max_new_tokens=max_new_tokens)):
            if token[0] == cfg.eos_token_id:
                break
            ids.append(int(token[0]))
            if on_token is not None:
                on_token(1)
    all_ids = [*inputs.input_ids.tolist(), *ids]
    tokens = [pipe.processor.tokenizer.id_to_token(i) or f"<{i}>" for i in all_ids]
    return Trace(token_ids=ids, text=pipe.processor.decode(ids), input_ids=inputs.input_ids,
                 tokens=tokens, grid=int(round(cfg.num_image_tokens ** 0.5)),
                 image_token_index=cfg.image_token_index, bos_token_id=cfg.bos_token_id,
                 pixel_values=inputs.pixel_values, checkpoint_hash=checkpoint_hash(model_dir),
                 pieces=cap.pieces)
