"""Model-level oracle tier: the cases, the transformers oracle, npgemma's side, the measurements.

Every case is a tiny random PaliGemma checkpoint (see `make_oracle_checkpoints.py` for how its
files are written). The oracle is transformers 5.24.0 run in float32 with eager attention and
`token_type_ids` passed (without them 5.24 silently builds a causal prefill). npgemma is run
through its public loader (`npgemma.load`) on both backends. Everything measured here is
returned as numbers, so the pytest file (`test_oracle_model.py`) asserts on them and
`python -m parity.make_oracle_checkpoints DIR --report` prints them as a table.

Weights are re-initialised so the tiny models are not trivial: RMSNorm weights are small
(Gemma scales by 1 + w, so the `1 +` matters), LayerNorm weights near 1, and linear weights
are N(0, gain^2 / fan_in) with gain 1.25, large enough that the layers (not the embedding of the
last token) decide the next token: greedy output is a varied sequence, not one repeated id.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from npgemma.synthetic.checkpoint import tiny_config
from npgemma.synthetic.tokenizer import TINY_IMAGE_TOKEN_ID

MAX_NEW_TOKENS = 12
FP32_ATOL = 2e-5    # float32 logits (prompt and every generation step), absolute
PROMPTS = ("caption en", "detect cat",
           "answer en what is the man on the left of the red car sitting on")
BATCH_PROMPTS = ("caption en", "answer en where is the cat sitting")


@functools.lru_cache(maxsize=None)
def _image_arrays() -> tuple[np.ndarray, ...]:
    """Random noise images of odd sizes; the second is RGBA with transparent and half-transparent
    rows (so the alpha-onto-white composite matters)."""
    rng = np.random.default_rng(2024)
    rgba = rng.integers(0, 256, (33, 45, 4), dtype=np.uint8)
    rgba[:6, :, 3] = 0
    rgba[6:12, :, 3] = 128
    return (rng.integers(0, 256, (21, 17, 3), dtype=np.uint8), rgba,
            rng.integers(0, 256, (50, 29, 3), dtype=np.uint8))


def images() -> list[Image.Image]:
    """Fresh PIL images (RGB 17x21, RGBA 45x33, RGB 29x50), one per prompt of PROMPTS."""
    return [Image.fromarray(a) for a in _image_arrays()]


def examples() -> list[tuple[Image.Image, str]]:
    return list(zip(images(), PROMPTS))


# ---- the cases -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One tiny checkpoint. `layout` is the on-disk key layout (npgemma.checkpoint.layout.LAYOUTS):
    "v5-save" (5.24's default save_pretrained), "v5" (save_original_format=False) are written
    by transformers itself; "hub" and "v4.52" (which 5.24 cannot write) by
    npgemma.synthetic.checkpoint.write_checkpoint, then loaded by transformers."""

    id: str
    text: str = "gemma"                 # "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2)
    heads: tuple[int, int] = (4, 1)     # (query heads N, kv heads K)
    dtype: str = "float32"              # on disk
    sharded: bool = False
    layout: str = "v5-save"
    minimal_config: bool = False        # config.json replaced by a hub-style minimal one
    seed: int = 0
    image_size: int = 28
    layers: int = 2
    text_overrides: tuple = ()          # (name, value) pairs for text_config
    batch: bool = False                 # also run the left-padded batch comparison
    bf16_oracle: bool = False           # also compare torch bfloat16 with HF in bfloat16
    gain: float = 1.25                  # linear weights ~ N(0, gain^2 / fan_in)

    @property
    def overrides(self) -> dict:
        return dict(self.text_overrides)

    @property
    def writer(self) -> str:
        return "transformers" if self.layout in ("v5-save", "v5") else "npgemma"


# Gemma-2 settings that bite at these sizes: a window shorter than the prefix (9 image tokens +
# <bos> + prompt + "\n" >= 13), soft caps below the raw score/logit range, a query scale that is
# not head_dim^-0.5, and head_dim != hidden / heads (32 / 4 = 8).
_PG2 = (("sliding_window", 4), ("attn_logit_softcapping", 1.5), ("final_logit_softcapping", 4.0),
        ("query_pre_attn_scalar", 40), ("head_dim", 24))
_PG2_LAYER_TYPES = (("sliding_window", 3), ("attn_logit_softcapping", 2.0),
                    ("final_logit_softcapping", 3.0), ("query_pre_attn_scalar", 10),
                    ("head_dim", 12),
                    ("layer_types", ["full_attention", "sliding_attention", "sliding_attention"]))

# Seeds picked (at gain 1.25) so each case's greedy output is varied (>= 4 distinct ids in one
# prompt) and never contains <image> (a generated <image> breaks any uncached re-run).
CASES = (
    Case("pg1-mqa-f32-single-v5save", heads=(4, 1), seed=1, batch=True),
    Case("pg1-gqa-f32-sharded-v5", heads=(4, 2), sharded=True, layout="v5", seed=1),
    Case("pg1-mqa-bf16-sharded-v5save", heads=(4, 1), dtype="bfloat16", sharded=True, seed=2),
    Case("pg1-gqa-bf16-single-hub", heads=(4, 2), dtype="bfloat16", layout="hub", seed=3),
    Case("pg1-mqa-f32-sharded-v4.52", heads=(4, 1), sharded=True, layout="v4.52", seed=0),
    Case("pg1-gqa-f32-minimal-config", heads=(4, 2), minimal_config=True, image_size=56, seed=0),
    Case("pg2-gqa-bf16-single-v5save", text="gemma2", heads=(4, 2), dtype="bfloat16",
         image_size=42, seed=0, text_overrides=_PG2, batch=True, bf16_oracle=True),
    Case("pg2-mha-bf16-sharded-v5-layertypes", text="gemma2", heads=(2, 2), dtype="bfloat16",
         sharded=True, layout="v5", image_size=42, layers=3, seed=2,
         text_overrides=_PG2_LAYER_TYPES),
)
CASE_BY_ID = {c.id: c for c in CASES}
BACKENDS = ("numpy", "torch")


def config_dict(case: Case) -> dict:
    """The config.json dict the checkpoint is built from (tiny_config's explicit sub-configs)."""
    n, k = case.heads
    return tiny_config(text=case.text, num_attention_heads=n, num_key_value_heads=k,
                       num_hidden_layers=case.layers, image_size=case.image_size,
                       **case.overrides)


def minimal_config_dict(case: Case) -> dict:
    """A config.json as minimal as the Hub's google/paligemma-3b-pt-224 one: sizes and model
    types only; head_dim (-> 256), rms_norm_eps, rope, activations, max positions, tying and
    SigLIP's layer_norm_eps all come from transformers' defaults."""
    full = config_dict(case)
    t, v = full["text_config"], full["vision_config"]
    text = {k: t[k] for k in ("hidden_size", "intermediate_size", "model_type",
                              "num_attention_heads", "num_hidden_layers", "num_image_tokens",
                              "num_key_value_heads", "vocab_size")}
    vision = {k: v[k] for k in ("hidden_size", "intermediate_size", "model_type",
                                "num_attention_heads", "num_hidden_layers", "num_image_tokens",
                                "patch_size", "projection_dim", "projector_hidden_act",
                                "vision_use_head", "image_size")}
    return {"_name_or_path": "final_conversion_of_paligemma",
            "architectures": ["PaliGemmaForConditionalGeneration"], "bos_token_id": 2,
            "eos_token_id": 1, "hidden_size": t["hidden_size"], "ignore_index": -100,
            "image_token_index": TINY_IMAGE_TOKEN_ID, "model_type": "paligemma",
            "pad_token_id": 0, "projection_dim": t["hidden_size"],
            "text_config": text | {"torch_dtype": "float32"}, "torch_dtype": "float32",
            "transformers_version": "4.42.0.dev0",
            "vision_config": vision}


def preprocessor_config(case: Case) -> dict:
    """A hub-style preprocessor_config.json (what google/paligemma-* ship)."""
    n = (case.image_size // 14) ** 2
    return {"image_processor_type": "SiglipImageProcessor", "image_seq_length": n,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": case.image_size, "width": case.image_size},
            "processor_class": "PaliGemmaProcessor"}


def init_weights(model, seed: int, gain: float = 1.25) -> None:
    """Re-draw every parameter of a transformers PaliGemma model from `seed` (see module doc)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding: drawn once
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "vision_tower" in name and "norm" in name:     # LayerNorm
                value = 1 + 0.1 * n if name.endswith("weight") else 0.05 * n
            elif "norm" in name:                               # Gemma RMSNorm: x * (1 + w)
                value = 0.1 * n
            elif name.endswith(("embed_tokens.weight", "position_embedding.weight")):
                value = 0.1 * n
            elif name.endswith("bias"):
                value = 0.05 * n
            else:                                              # [out, in] linears, OIHW conv
                value = gain * p[0].numel() ** -0.5 * n
            p.copy_(value.to(p.dtype))


# ---- the oracle (transformers) ---------------------------------------------------------------

def hf_processor(folder):
    """PaliGemmaProcessor with SiglipImageProcessor's PIL backend pinned (torchvision's resizes
    with another kernel; npgemma mirrors the PIL one)."""
    from transformers import AutoImageProcessor, AutoTokenizer, PaliGemmaProcessor

    image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    return PaliGemmaProcessor(image_processor=image_processor,
                              tokenizer=AutoTokenizer.from_pretrained(folder))


def hf_model(folder, dtype: str = "float32"):
    """(model, loading_info): eager attention, every tensor cast to `dtype` when loaded."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    model, info = PaliGemmaForConditionalGeneration.from_pretrained(
        folder, dtype=getattr(torch, dtype), attn_implementation="eager", output_loading_info=True)
    return model.eval(), info


@dataclass
class HFResult:
    input_ids: np.ndarray          # int64[L]
    token_type_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray       # float32[3, S, S]
    vision: list                   # embeddings, each layer output
    projector: np.ndarray          # float32[P, D]
    decoder: list                  # input, each layer output, final normed
    logits: np.ndarray             # float32[L, V]
    tokens: list[int]              # greedy, EOS excluded
    step_logits: np.ndarray        # float32[T, V]: the logits each greedy token was taken from


class Oracle:
    """transformers' side of one checkpoint folder."""

    def __init__(self, folder, dtype: str = "float32"):
        self.folder, self.dtype = Path(folder), dtype
        self.processor = hf_processor(folder)
        self.model, self.loading_info = hf_model(folder, dtype)

    def process(self, image, prompt):
        return self.processor(images=image, text=prompt, return_tensors="pt")

    def run(self, image, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS) -> HFResult:
        import torch

        inputs = self.process(image, prompt)
        lm = self.model.model.language_model
        layer_outputs: list = []
        hooks = [layer.register_forward_hook(
            lambda _m, _i, out: layer_outputs.append(out[0] if isinstance(out, tuple) else out))
            for layer in lm.layers]
        try:
            with torch.no_grad():
                vis = self.model.model.vision_tower(inputs["pixel_values"].to(self.model.dtype),
                                                    output_hidden_states=True)
                proj = self.model.model.get_image_features(
                    inputs["pixel_values"].to(self.model.dtype)).pooler_output
                out = self.model(**inputs, output_hidden_states=True)
        finally:
            for h in hooks:
                h.remove()
        # HF's hidden_states are [input, layers 0..n-2, final normed] (the last layer's output
        # is replaced by the normed one); the hooks give every layer's output.
        decoder = [out.hidden_states[0], *layer_outputs, out.hidden_states[-1]]
        assert len(layer_outputs) == len(lm.layers) == len(out.hidden_states) - 1
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states[1:-1], layer_outputs))
        tokens, step_logits = self.generate(inputs, max_new_tokens)
        first = {k: inputs[k][0].numpy() for k in ("input_ids", "token_type_ids",
                                                   "attention_mask", "pixel_values")}
        return HFResult(**first, vision=[_np(h[0]) for h in vis.hidden_states],
                        projector=_np(proj[0]), decoder=[_np(h[0]) for h in decoder],
                        logits=_np(out.logits[0]), tokens=tokens[0], step_logits=step_logits[0])

    def generate(self, inputs, max_new_tokens: int = MAX_NEW_TOKENS):
        """Greedy `generate` with token_type_ids and attention_mask: (per-row new tokens up to EOS,
        per-row float32[T, V] logits of those steps)."""
        import torch

        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                      eos_token_id=1, pad_token_id=0, return_dict_in_generate=True,
                                      output_logits=True)
        new = out.sequences[:, inputs["input_ids"].shape[1]:].tolist()
        steps = np.stack([_np(x) for x in out.logits], axis=1)  # [B, T, V]
        rows, logits = [], []
        for b, row in enumerate(new):
            n = row.index(1) if 1 in row else len(row)
            rows.append(row[:n])
            logits.append(steps[b, :n])
        return rows, logits

    def generate_batch(self, images_, prompts, max_new_tokens: int = MAX_NEW_TOKENS):
        inputs = self.processor(images=list(images_), text=list(prompts), padding="longest",
                                return_tensors="pt")
        return self.generate(inputs, max_new_tokens)[0], inputs


def _np(t) -> np.ndarray:
    return t.detach().float().numpy()


# ---- npgemma's side --------------------------------------------------------------------------

@dataclass
class NpResult:
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    pixel_values: np.ndarray
    vision: list
    projector: np.ndarray
    decoder: list
    logits: np.ndarray             # from the same forward that recorded the hidden states
    pipe_logits: np.ndarray        # from the public Pipeline.logits
    tokens: list[int]              # Pipeline.generate
    step_logits: np.ndarray        # [T, V] cached decode logits behind those tokens
    uncached_logits: np.ndarray    # [T, V] one uncached forward over prompt + tokens


class Runner:
    """npgemma's side of one checkpoint folder, on one backend."""

    def __init__(self, folder, backend: str = "numpy", dtype: str = "float32"):
        import npgemma

        self.pipe = npgemma.load(folder, backend=backend, dtype=dtype)
        self.backend_name = backend

    def _model_module(self):
        if self.backend_name == "torch":
            from npgemma.torch_backend import paligemma
        else:
            from npgemma import paligemma
        return paligemma

    def _in(self, a: np.ndarray, kind=None):
        """A NumPy input as the backend's array (kind: "float" / "long" / None for bool)."""
        if self.backend_name != "torch":
            return a
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a))
        if kind == "float":
            return t.to(self.pipe.backend.dtype)
        return t.long() if kind == "long" else t

    def forward(self, input_ids: np.ndarray, is_prefix: np.ndarray, pixel_values: np.ndarray,
                vision: list | None = None, decoder: list | None = None, cfg=None,
                edit_masks=None):
        """Uncached forward of one row: (logits float32[L, V], projector float32[P, D]).

        is_prefix bool[L] marks the bidirectional prefix; `vision` / `decoder` lists receive the
        hidden states. `cfg` replaces the loaded config (to show a setting matters);
        `edit_masks(masks) -> masks` may alter the NumPy masks before they are used.
        """
        import contextlib

        from npgemma.paligemma import attention_masks, rope_positions

        pg, params = self._model_module(), self.pipe.params
        cfg = self.pipe.cfg if cfg is None else cfg
        ids = input_ids[None]
        if np.count_nonzero(ids == cfg.image_token_index) != cfg.num_image_tokens:
            raise AssertionError("the sequence holds a generated <image> token, which no uncached "
                                 "forward (npgemma's or HF's) accepts: pick another seed")
        valid = np.ones(ids.shape, bool)
        masks = attention_masks(cfg, valid, is_prefix[None], 0)
        if edit_masks is not None:
            masks = edit_masks(masks)
        masks = {k: self._in(m) for k, m in masks.items()}
        ctx = contextlib.nullcontext()
        if self.backend_name == "torch":
            import torch
            ctx = torch.inference_mode()
        with ctx:
            feats = pg.encode_image(params, self._in(pixel_values[None], "float"), cfg, vision)
            logits, _ = pg.forward(params, cfg, self._in(ids, "long"),
                                   self._in(rope_positions(valid), "long"), masks,
                                   image_features=feats, hidden_states=decoder)
        to_np = self.pipe.backend.to_numpy
        if vision is not None:
            vision[:] = [to_np(h)[0] for h in vision]
        if decoder is not None:
            decoder[:] = [to_np(h)[0] for h in decoder]
        return to_np(logits)[0], to_np(feats)[0]

    def uncached(self, image, prompt: str, tokens, **kwargs) -> np.ndarray:
        """float32[T, V]: the logits that predicted each of `tokens`, from one uncached forward
        over prompt + tokens (the tokens are the causal suffix)."""
        inputs = self.pipe.processor(image, prompt)
        n = len(inputs.input_ids)
        full = np.concatenate([inputs.input_ids, np.asarray(tokens, np.int64)])
        logits, _ = self.forward(full, np.arange(len(full)) < n, inputs.pixel_values, **kwargs)
        return logits[n - 1:n - 1 + len(tokens)]  # position p's logits predict token p + 1

    def generate_with_logits(self, image, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS):
        """Greedy tokens from `generate_tokens` (the loop Pipeline.generate runs) and the cached
        last-position logits each came from."""
        from npgemma.generation.generate import GenerationConfig, generate_tokens

        recorded: list = []
        backend = _Recorder(self.pipe.backend, recorded)
        inputs = self.pipe.processor(image, prompt)
        tokens, gen = [], GenerationConfig(max_new_tokens=max_new_tokens)
        for t in generate_tokens(backend, self.pipe.params, self.pipe.cfg, inputs.input_ids[None],
                                 inputs.pixel_values[None], gen):
            if t[0] == self.pipe.cfg.eos_token_id:
                break
            tokens.append(int(t[0]))
        return tokens, np.stack(recorded)[:len(tokens)]

    def run(self, image, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS) -> NpResult:
        inputs = self.pipe.processor(image, prompt)
        vision, decoder = [], []
        prefix = np.ones(inputs.input_ids.shape, bool)
        logits, proj = self.forward(inputs.input_ids, prefix, inputs.pixel_values, vision, decoder)
        out = self.pipe.generate(image, prompt, max_new_tokens=max_new_tokens)
        tokens, step_logits = self.generate_with_logits(image, prompt, max_new_tokens)
        assert tokens == out.token_ids, (tokens, out.token_ids)
        return NpResult(input_ids=inputs.input_ids, token_type_ids=inputs.token_type_ids,
                        pixel_values=inputs.pixel_values, vision=vision, projector=proj,
                        decoder=decoder, logits=logits, pipe_logits=self.pipe.logits(image, prompt, positions=slice(None)),
                        tokens=out.token_ids, step_logits=step_logits,
                        uncached_logits=self.uncached(image, prompt, tokens))


class _Recorder:
    """A backend proxy that keeps (as NumPy) the last-position logits each greedy token came from."""

    def __init__(self, backend, recorded: list):
        self._backend, self._recorded = backend, recorded

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def greedy(self, logits):
        self._recorded.append(self._backend.last_logits_to_numpy(logits)[0])
        return self._backend.greedy(logits)


# ---- measurements ----------------------------------------------------------------------------

def max_abs(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def compare_example(ours: NpResult, hf: HFResult) -> dict:
    """Max abs differences (and token agreement) of one example."""
    t = min(len(ours.tokens), len(hf.tokens))
    return {
        "ids_equal": ours.input_ids.tolist() == hf.input_ids.tolist()
        and ours.token_type_ids.tolist() == hf.token_type_ids.tolist(),
        "pixels": max_abs(ours.pixel_values, hf.pixel_values),
        "vision": max(max_abs(a, b) for a, b in zip(ours.vision, hf.vision, strict=True)),
        "projector": max_abs(ours.projector, hf.projector),
        "decoder": max(max_abs(a, b) for a, b in zip(ours.decoder, hf.decoder, strict=True)),
        "logits": max_abs(ours.logits, hf.logits),
        "pipe_logits": max_abs(ours.pipe_logits, hf.logits),
        "tokens_equal": ours.tokens == hf.tokens,
        "step_logits": max_abs(ours.step_logits[:t], hf.step_logits[:t]) if t else 0.0,
        "cached_vs_uncached": max_abs(ours.step_logits, ours.uncached_logits),
        "uncached_greedy_equal": ours.uncached_logits.argmax(-1).tolist() == ours.tokens,
    }


def summarize(per_example: list[dict]) -> dict:
    """Worst value of each measurement over the examples (all() for the booleans)."""
    out = {}
    for key in per_example[0]:
        vals = [e[key] for e in per_example]
        out[key] = all(vals) if isinstance(vals[0], bool) else max(vals)
    return out


def distinct_tokens(token_lists) -> int:
    return max((len(set(t)) for t in token_lists), default=0)


def replace_text(cfg, **changes):
    """`cfg` with text_config fields changed (to show a setting matters)."""
    return dataclasses.replace(cfg, text_config=dataclasses.replace(cfg.text_config, **changes))


def case_rows(case: Case, folder, backends=BACKENDS) -> list[dict]:
    """Measure one case on each backend (used by the report; the tests measure the same way)."""
    oracle = Oracle(folder)
    hf = [oracle.run(im, p) for im, p in examples()]
    rows = []
    for backend in backends:
        runner = Runner(folder, backend)
        s = summarize([compare_example(runner.run(im, p), h)
                       for (im, p), h in zip(examples(), hf)])
        rows.append({"case": case.id, "backend": backend, "dtype": "float32", **s,
                     "distinct": distinct_tokens(h.tokens for h in hf)})
    if case.bf16_oracle and "torch" in backends:
        rows.append({"case": case.id, "backend": "torch", "dtype": "bfloat16",
                     **bf16_measure(folder)})
    return rows


def bf16_examples(folder):
    """torch bfloat16 (npgemma) vs transformers loaded in bfloat16, eager, per example:
    yields (prompt, Comparison of the prompt logits by the bfloat16 "logits" tolerance,
    npgemma's greedy tokens, HF's greedy tokens)."""
    import torch

    from npgemma.compare.tolerances import compare

    oracle = Oracle(folder, dtype="bfloat16")
    pipe = Runner(folder, "torch", dtype="bfloat16").pipe
    for image, prompt in examples():
        inputs = oracle.process(image, prompt)
        with torch.no_grad():
            hf_logits = _np(oracle.model(**inputs).logits[0])
        c = compare(pipe.logits(image, prompt, positions=slice(None)), hf_logits, "logits", "bfloat16")
        ours = pipe.generate(image, prompt, max_new_tokens=MAX_NEW_TOKENS).token_ids
        yield prompt, c, ours, oracle.generate(inputs)[0][0]


def bf16_measure(folder) -> dict:
    rows = list(bf16_examples(folder))
    return {"logits": max(c.max_abs for _, c, _, _ in rows),
            "logits_within_bf16_tolerance": all(c.ok for _, c, _, _ in rows),
            "tokens_equal": all(a == b for _, _, a, b in rows),
            "distinct": distinct_tokens(b for _, _, _, b in rows)}


def format_table(rows: list[dict]) -> str:
    """One line per (case, backend, dtype), in CASES order; max abs differences in %.2e."""
    order = {c.id: i for i, c in enumerate(CASES)}
    rows = sorted(rows, key=lambda r: (order.get(r["case"], len(order)), r["dtype"] != "float32",
                                       r["backend"]))
    cols = ("case", "backend", "dtype", "vision", "projector", "decoder", "logits", "step_logits",
            "cached_vs_uncached", "tokens_equal", "distinct")
    head = ["case", "backend", "dtype", "vision", "proj", "decoder", "logits", "gen-logits",
            "cache", "tokens", "distinct"]
    body = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = [head, ["-" * w for w in widths], *body]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
                     for cells in lines)


def _cell(v) -> str:
    if isinstance(v, bool):
        return "same" if v else "DIFF"
    if isinstance(v, float):
        return f"{v:.2e}"
    return "-" if v is None else str(v)

