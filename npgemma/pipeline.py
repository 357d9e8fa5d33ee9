"""The public API: `npgemma.load(dir)` -> Pipeline with `.processor`, `.logits`, `.generate`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .checkpoint import bundled, estimate, memory, prefetch
from .checkpoint.estimate import Need
from .checkpoint.config_json import load_config
from .checkpoint.hub import resolve
from .checkpoint.memory import Streaming
from .checkpoint.vae_file import load_vae
from .checkpoint.weights import header_summary
from .config import PaliGemmaConfig, with_window
from .errors import InputError
from .generation.backend import Backend, check_backend, get_backend
from .generation.generate import GenerationConfig, check_length, generate_tokens
from .generation.postprocess import parse_objects
from .generation.processing import Processor
from .generation.slots import Slots
from .generation.streaming import stream_decode


@dataclass(frozen=True)
class GenerateOutput:
    text: str                     # the decoded new tokens (EOS excluded), <loc>/<seg> kept
    token_ids: list[int] = field(default_factory=list)  # the new token ids, EOS excluded


class Pipeline:
    """A loaded checkpoint on one backend. Build it with `npgemma.load`."""

    def __init__(self, cfg: PaliGemmaConfig, params, processor: Processor, backend: Backend,
                 vae=None, model_dir: str | os.PathLike | None = None, memory: Need | None = None):
        self.cfg, self.params, self.processor, self.backend = cfg, params, processor, backend
        self.vae = vae  # the mask VQ-VAE's weights on this backend, or None
        self.model_dir = model_dir  # the folder the weights came from (a trace hashes it), or None
        self.memory = memory  # what the run needs, by the memory check (None: load(force=True))

    @property
    def streaming(self) -> Streaming | None:
        """The memory check's verdict when the weights are larger than the memory available and
        stream from disk on every pass (bytes and seconds per token, layers kept cached); None
        when they fit (or the check was skipped). `str()` of it says so in words."""
        return None if self.memory is None else self.memory.streams

    def decode_masks(self, codes) -> np.ndarray:
        """float32[B, 64, 64] mask maps (about [-1, 1], > 0 is the object) from int[B, 16]
        `<seg>` codes, through the VQ-VAE given as `npgemma.load(..., vae=PATH)`."""
        if self.vae is None:
            raise InputError("this answer has <seg> codes, but no VQ-VAE is loaded: pass "
                             "vae=PATH (PaliGemma's vae-oid.npz) to npgemma.load, or --vae PATH")
        return self.backend.decode_masks(self.vae, codes)

    def objects(self, text: str, width: int, height: int, divisor: float = 1024.0):
        """`postprocess.parse_objects` of a generated answer, with masks when a VQ-VAE is loaded."""
        return parse_objects(text, width, height, divisor,
                             decode_masks=None if self.vae is None else self.decode_masks)

    def logits(self, image, prompt: str, positions=None) -> np.ndarray:
        """float32[len(positions), V]: the logits at prompt positions `positions` (indices into
        the processor's input_ids; default: every text position, i.e. all but the image tokens,
        whose logits nobody reads and which cost [P, V] floats: 4.2 GB at 896 px; pass
        `positions=slice(None)` for all), from one uncached forward with the whole prompt as
        the bidirectional prefix."""
        inputs = self.processor(image, prompt)
        ids = inputs.input_ids[None]
        check_length(self.cfg, ids.shape[1], 0)
        if positions is None:
            positions = np.flatnonzero(inputs.input_ids != self.cfg.image_token_index)
        positions = np.arange(ids.shape[1])[positions]
        slots = Slots.full(1, ids.shape[1])
        feats = self.backend.encode_image(self.params, inputs.pixel_values[None], self.cfg)
        logits, _ = self.backend.forward(self.params, self.cfg, ids, slots.positions(),
                                         slots.masks(self.cfg), image_features=feats,
                                         logit_positions=positions)
        return self.backend.to_numpy(logits)[0]

    def iter_tokens(self, image, prompt: str, **generation) -> Iterator[int]:
        """Yield new token ids one by one as they are generated (EOS excluded)."""
        gen = GenerationConfig(**generation)
        inputs = self.processor(image, prompt)
        for token in generate_tokens(self.backend, self.params, self.cfg, inputs.input_ids[None],
                                     inputs.pixel_values[None], gen):
            if token[0] == self.cfg.eos_token_id:
                return
            yield int(token[0])

    def stream(self, image, prompt: str, **generation) -> Iterator[str]:
        """Yield pieces of decoded text as tokens arrive (for printing while generating); they
        join to exactly `generate(...).text` (see `npgemma.generation.streaming`)."""
        yield from stream_decode(self.processor.tokenizer, self.iter_tokens(image, prompt, **generation))

    def generate(self, image, prompt: str, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None) -> GenerateOutput:
        """Generate up to `max_new_tokens` after the prompt; stop at EOS."""
        ids = list(self.iter_tokens(image, prompt, max_new_tokens=max_new_tokens,
                                    do_sample=do_sample, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed))
        return GenerateOutput(text=self.processor.decode(ids), token_ids=ids)

    def trace(self, image, prompt: str, names=None, layers=None, heads=None,
              max_new_tokens: int = 32):
        """Greedy generation with named activations kept: a `npgemma.inspection.trace.Trace`
        (hook names, shapes and the selection rules are documented there)."""
        from .inspection.trace import trace

        return trace(self, image, prompt, names=names, layers=layers, heads=heads,
                     max_new_tokens=max_new_tokens, model_dir=self.model_dir)

    def generate_batch(self, images, prompts, **generation) -> list[GenerateOutput]:
        """Several (image, prompt) pairs at once, left-padded; each row as if alone."""
        if len(images) != len(prompts):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts")
        batch = self.processor.batch(images, prompts)
        gen = GenerationConfig(**generation)
        rows: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), bool)
        for token in generate_tokens(self.backend, self.params, self.cfg, batch.input_ids,
                                     batch.pixel_values, gen, attention_mask=batch.attention_mask):
            for i, t in enumerate(token):
                done[i] |= t == self.cfg.eos_token_id
                if not done[i]:
                    rows[i].append(int(t))
        return [GenerateOutput(self.processor.decode(r), r) for r in rows]


def load(model: str | os.PathLike | None = None, backend: str = "numpy", device: str = "cpu",
         dtype: str = "float32", progress: Callable[[int, int, str], None] | None = None, *,
         force: bool = False, text_tokens: int = estimate.TEXT_TOKENS, batch: int = 1,
         vae: str | os.PathLike | None = None, window: str = "transformers") -> Pipeline:
    """Load a Hugging Face PaliGemma checkpoint: a folder (config.json, *.safetensors,
    tokenizer.json) or a model id `org/name[@revision]` in the local Hugging Face cache; None
    (the default) is the bundled demo model, `npgemma/demo/model/`, with its mask VQ-VAE
    (`npgemma.checkpoint.bundled`: the one place that says so; the CLI passes None too).

    backend "numpy" (CPU, float32 compute; dtype "bfloat16" keeps the weights in bfloat16 to
    halve memory) or "torch" (device "cpu"/"cuda", dtype the compute dtype).
    `progress(done_bytes, total_bytes, tensor_name)` is called while weights load.
    Before any weight is read, the memory the run needs (for the image tokens plus
    `text_tokens` prompt + new tokens, in `batch` rows) is checked against what is available; too little
    raises InputError with the figures, unless `force`. The check's estimate is the Pipeline's
    `.memory`; when the weights stream from disk, its `.streaming` says how (the CLI prints it).
    `vae`: PaliGemma's mask VQ-VAE (`vae-oid.npz` layout), to turn `<seg>` codes into masks.
    `window`: whose Gemma-2 sliding window to run, "transformers" (5.24's: generated tokens
    only) or "big_vision" (the training code's: none); they differ only past 4096 tokens
    (docs/numerics.md, "Two authorities for the sliding window").
    """
    if model is None and vae is None:
        vae = bundled.vae_path()  # the bundled model's own VQ-VAE (resolve(None) is its folder)
    check_backend(backend, device, dtype)  # a mistyped name fails before anything is read
    model_dir = resolve(model)
    cfg = with_window(load_config(model_dir), window)
    need = None
    if not force:
        files, headers = header_summary(model_dir)
        need = memory.check(cfg, str(model_dir) if model is None else os.fspath(model),
                            backend=backend, dtype=dtype, device=device,
                            disk_dtype=estimate.stored_dtype(headers), text_tokens=text_tokens,
                            batch=batch, files=files, read_speed=prefetch.read_speed)
    streams = None if need is None else need.streams  # larger than RAM: run from disk
    be = get_backend(backend, device=device, dtype=dtype, stream=streams is not None,
                     keep=0 if streams is None else streams.resident_layers)
    processor = Processor.from_pretrained(model_dir, cfg)
    params = be.load_weights(model_dir, cfg, progress=progress)
    mask_vae = None if vae is None else be.from_numpy(load_vae(vae))
    return Pipeline(cfg, params, processor, be, mask_vae, model_dir=model_dir, memory=need)
