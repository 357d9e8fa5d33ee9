"""What a run needs: the bytes a checkpoint takes on a backend, from config.json alone.

Computed before any weight is read (`memory.check` holds it against what the machine has,
`machine.available_memory`), so a checkpoint too big for the machine ends in one clear error
instead of the kernel's OOM killer. The estimate, per part:

  weights      parameters × bytes of the weight dtype (numpy float32: 4; numpy low-memory
               bfloat16/float16: 2; torch: its compute dtype). While loading, one on-disk
               copy of the largest tensor lives next to them when it is cast
               (`weights.load_weights` reads one tensor at a time).
  KV-cache     2 (k, v) × layers × B × K × S × H × bytes (numpy keeps it in float32, torch in
               its compute dtype); S = image tokens + text tokens (prompt + new tokens).
  activations  the largest live intermediate, vision or text: the attention scores
               float32[B, N, L, S] with the copies softmax keeps alive (bounded by query-chunked
               attention at MAX_SCORE_BYTES), or the MLP's [B, L, F] with its temporaries.
  runtime      what the run adds besides, from the check on (`runtime_bytes`): the tokenizer,
               the imports the backend has not made yet, some slack. What the process holds
               already (interpreter, NumPy, the imports made) is not counted again: the reading
               the need is held against (MemAvailable, the cgroup's usage) counts it as used.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from .. import _kernels
from ..config import PaliGemmaConfig
from .checks import DTYPES
from .prefetch import READ_AHEAD

MAX_SCORE_BYTES = 256 * 2**20  # attention scores alive at once, with query chunking
TEXT_TOKENS = 256              # prompt + new tokens budgeted when the caller does not say
# The runtime allowance, measured (fresh processes, the bundled demo model, 32 new tokens; RSS
# from /proc/self/status at the memory check, peak from getrusage; the commands are in
# tests/test_memory.py::test_runtime_allowance_covers_a_real_run, which re-measures it):
# beyond the RSS at the check, a run grew by its counted weights, caches and activations plus
# 0.5 (numpy bfloat16) to 7.6 (numpy float32) and 15.9-17.4 MB (torch CPU); `import torch`
# takes 183 MB of RSS (54 -> 237 MB); a full 257,216-entry tokenizer.json (7.9 MB) 89.6 MB
# once loaded, 365 bytes an entry. Full size (benchmarks/make_checkpoint.py paligemma2-3b-pt-224,
# numpy bfloat16, 2 new tokens): anonymous RSS grew 179.5 MB from the check to the end, against
# 396 MB counted (runtime 199, KV-cache 109, activations 75, widening 13); file pages 6.07 GB
# against 6.06 GB counted.
RUNTIME_SLACK = 64 * 2**20       # allocator, BLAS buffers, PIL: ~4x the largest residual seen
TOKENIZER_BYTES_PER_TOKEN = 512  # the vocabulary in the tokenizers library (365 B measured)
TORCH_IMPORT_BYTES = 256 * 2**20  # when torch is not imported yet at the check (183 MB measured)
# Torch on a GPU: the CUDA context's host memory, *not measured* (no GPU where this was
# written): the former fixed allowance is kept for it.
CUDA_CONTEXT_BYTES = 2**30
_SCORE_COPIES = 3              # scores, exp(scores - max), the normalized probabilities
_MLP_COPIES = 4                # gate, up, and tanh-GELU's temporaries, all [B, L, F]
ITEMSIZE = {name: d.itemsize for name, d in DTYPES.items()}
# One widened float32 slab per thread of ours (`_kernels`: a reused scratch buffer each), the
# calling thread's grown to a prefill's GEMM-sized slab.
_WIDENING_BYTES = _kernels.SLAB_BYTES * _kernels.WORKERS + max(_kernels.SLAB_BYTES,
                                                               _kernels.GEMM_SLAB_BYTES)


@dataclass(frozen=True)
class Need:
    """Bytes a run needs, by part, in host RAM and (torch on a GPU) in GPU memory."""

    ram: dict[str, int]
    gpu: dict[str, int] = field(default_factory=dict)
    # Memory-mapped file pages (the low-memory mode's weights): reclaimable, so they may exceed
    # what is available; the run then streams them from disk (`streams`).
    file: dict[str, int] = field(default_factory=dict)
    streams: "Streaming | None" = None  # memory.Streaming, the verdict

    @property
    def ram_total(self) -> int:
        """Anonymous memory: what the kernel cannot reclaim (file pages not counted)."""
        return sum(self.ram.values())

    @property
    def file_total(self) -> int:
        return sum(self.file.values())

    @property
    def gpu_total(self) -> int:
        return sum(self.gpu.values())


def text_tokens(prompt: str, max_new_tokens: int) -> int:
    """An upper bound on the text tokens of a run, for the memory check: a token covers at
    least one UTF-8 byte (byte fallback), plus <bos> and the "\n" separator."""
    # surrogatepass: a prompt that is not valid UTF-8 is refused later, by the processor
    return len(prompt.encode("utf-8", "surrogatepass")) + 2 + max_new_tokens


def _vision_layer_params(cfg: PaliGemmaConfig) -> int:
    """One SigLIP encoder layer: two LayerNorms, q/k/v/out with biases, fc1/fc2 with biases."""
    dv, fv = cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size
    return 2 * 2 * dv + 4 * (dv * dv + dv) + 2 * fv * dv + fv + dv


def _vision_params(cfg: PaliGemmaConfig) -> int:
    """The vision tower (no pooling head) and the projector."""
    v, dt = cfg.vision_config, cfg.text_config.hidden_size
    embeddings = v.hidden_size * (v.num_channels * v.patch_size**2 + 1 + v.num_patches)
    post_norm, projector = 2 * v.hidden_size, dt * v.hidden_size + dt
    return embeddings + v.num_hidden_layers * _vision_layer_params(cfg) + post_norm + projector


def _table_params(cfg: PaliGemmaConfig) -> int:
    return cfg.text_config.vocab_size * cfg.text_config.hidden_size


def decoder_layer_params(cfg: PaliGemmaConfig) -> int:
    """Parameters of one decoder layer (every layer has the same shapes): its norms, q/k/v/o,
    gate/up/down."""
    t = cfg.text_config
    dt, h = t.hidden_size, t.head_dim
    norms = 4 if t.is_gemma2 else 2
    attention = 2 * t.num_attention_heads * h * dt + 2 * t.num_key_value_heads * h * dt
    return norms * dt + attention + 3 * t.intermediate_size * dt


def per_token_params(cfg: PaliGemmaConfig) -> int:
    """Parameters one decode step reads: the decoder's (its layers, final norm, and the output
    table, tied to the embedding, or the embedding and an untied lm_head); not the vision tower
    or the projector."""
    t = cfg.text_config
    tables = 1 if t.tie_word_embeddings else 2
    return (tables * _table_params(cfg) + t.num_hidden_layers * decoder_layer_params(cfg)
            + t.hidden_size)


def num_params(cfg: PaliGemmaConfig) -> int:
    """Parameters the model runs (a tied lm_head counted once, the unused vision head not).

    Counted per kind of layer, times the layer count: the cost does not grow with the numbers in
    config.json (`layout.expected_shapes` lists every tensor; tests hold the two equal)."""
    return _vision_params(cfg) + per_token_params(cfg)


def stored_dtype(headers: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """The dtype holding most of a checkpoint's elements (from `weights.header_summary`);
    "mixed" only when another dtype holds a tenth of them or more."""
    counts: dict[str, int] = {}
    for dtype, shape in headers.values():
        counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1]) or [("?", 0)]
    return "mixed" if len(ranked) > 1 and ranked[1][1] * 10 >= ranked[0][1] else ranked[0][0]


def _largest_tensor(cfg: PaliGemmaConfig) -> int:
    """Elements of the largest single tensor (what loading holds twice while it is cast)."""
    v, t = cfg.vision_config, cfg.text_config
    dv, dt, h = v.hidden_size, t.hidden_size, t.head_dim
    return max(_table_params(cfg), dv * v.num_channels * v.patch_size**2, v.num_patches * dv,
               v.intermediate_size * dv, dv * dv, dt * dv,
               t.num_attention_heads * h * dt, t.num_key_value_heads * h * dt,
               t.intermediate_size * dt)


# Streamed, the kernel is left this much page cache beside the blocks in flight. It also holds
# what dropping cannot take out: a page-cache folio (up to 2 MiB) straddling the end of a dropped
# block's range and a neighbour, at most two a range (a 28B pass: ~80 ranges, < 0.4 GiB; clean
# pages, the first the kernel reclaims). Nothing is read past a range (`prefetch.read_ahead`).
_CACHE_SLACK = 2**30


def resident_layers(cfg: PaliGemmaConfig, itemsize: int, spare: int) -> int:
    """How many decoder layers, from the first, can stay in the page cache of a streamed run
    with `spare` bytes of memory beyond its anonymous part: what is left after the blocks in
    flight, the vision tower (read once a prefill, never dropped) and some slack. In flight are
    2 + READ_AHEAD blocks in a row (the one done, the one computing, the ones asked for ahead:
    `prefetch.Streamer` drops the block before those before it asks for the next): as many
    layers, or one fewer and the output table."""
    layer = decoder_layer_params(cfg) * itemsize
    table = _table_params(cfg) * itemsize
    vision = _vision_params(cfg) * itemsize
    budget = spare - (1 + READ_AHEAD) * layer - max(layer, table) - vision - _CACHE_SLACK
    return max(0, min(cfg.text_config.num_hidden_layers, budget // layer)) if layer else 0


def kv_cache_bytes(cfg: PaliGemmaConfig, seq_len: int, itemsize: int, batch: int = 1) -> int:
    t = cfg.text_config
    return 2 * t.num_hidden_layers * batch * t.num_key_value_heads * seq_len * t.head_dim * itemsize


def activation_bytes(cfg: PaliGemmaConfig, seq_len: int, itemsize: int, batch: int = 1) -> int:
    """The largest intermediate of one forward over the prefix (vision tower or decoder)."""
    v, t = cfg.vision_config, cfg.text_config
    p = v.num_patches
    # float32[B, N, L, S] scores (softmax is always float32), with their copies, chunk-bounded.
    scores = max(batch * v.num_attention_heads * p * p, batch * t.num_attention_heads * seq_len**2)
    attention = min(scores * 4 * _SCORE_COPIES, MAX_SCORE_BYTES)
    mlp = max(batch * p * v.intermediate_size, batch * seq_len * t.intermediate_size)
    return max(attention, mlp * itemsize * _MLP_COPIES)


def _run(cfg: PaliGemmaConfig, backend: str, dtype: str, text_tokens: int, batch: int) -> dict:
    """KV-cache and largest activation: float32 on numpy, the compute dtype on torch."""
    seq = cfg.num_image_tokens + text_tokens
    size = 4 if backend == "numpy" else ITEMSIZE[dtype]
    return {"KV-cache": kv_cache_bytes(cfg, seq, size, batch),
            "activations": activation_bytes(cfg, seq, size, batch)}


def runtime_bytes(cfg: PaliGemmaConfig, backend: str = "numpy", device: str = "cpu") -> int:
    """What a run adds from the memory check on, beyond its weights, caches and activations:
    the tokenizer (by vocabulary size), the imports `backend` has not made yet (torch, looked up
    in sys.modules now), the CUDA context on a GPU, and slack."""
    out = RUNTIME_SLACK + cfg.text_config.vocab_size * TOKENIZER_BYTES_PER_TOKEN
    if backend == "torch":
        out += TORCH_IMPORT_BYTES if "torch" not in sys.modules else 0
        out += CUDA_CONTEXT_BYTES if device != "cpu" else 0
    return out


def estimate(cfg: PaliGemmaConfig, backend: str = "numpy", dtype: str = "float32",
             device: str = "cpu", disk_dtype: str = "bfloat16", text_tokens: int = TEXT_TOKENS,
             batch: int = 1) -> Need:
    """What loading `cfg` on backend/dtype/device and generating `text_tokens` needs."""
    weights = num_params(cfg) * ITEMSIZE[dtype]  # numpy float32 / torch: the compute dtype
    loading = _largest_tensor(cfg) * ITEMSIZE.get(disk_dtype, 4) if disk_dtype != dtype else 0
    run = _run(cfg, backend, dtype, text_tokens, batch)
    runtime = runtime_bytes(cfg, backend, device)
    if backend == "numpy" and dtype != "float32":
        # Low memory: the weights are the file's pages, memory-mapped in its dtype (reclaimable);
        # the anonymous memory is the run's, plus one widened slab per thread.
        mapped = num_params(cfg) * ITEMSIZE.get(disk_dtype, 4)
        return Need(ram={"runtime": runtime, "widening": _WIDENING_BYTES} | run,
                    file={"weights": mapped})
    host = {"weights": weights, "runtime": runtime}
    if backend == "torch" and device != "cpu":
        # Tensors go to the device one at a time as they are read (`iter_weights`): host RAM
        # holds about one (the largest, in the file's dtype and the compute dtype).
        one = _largest_tensor(cfg) * (ITEMSIZE.get(disk_dtype, 4) + ITEMSIZE[dtype])
        return Need(ram={"runtime": runtime, "loading": one}, gpu={"weights": weights} | run)
    # Loading and running are not alive at once: the cast copy is gone before the cache exists.
    worst = max([{"loading": loading}, run], key=lambda d: sum(d.values()))
    return Need(ram=host | worst)


NARROW = ("bfloat16", "float16")  # stored dtypes the low-memory mode maps and widens exactly


def parity_estimate(cfg: PaliGemmaConfig, dtype: str, device: str, disk_dtype: str,
                    text_tokens: int, reference: str = "float32") -> Need:
    """`npgemma parity`: the NumPy float32 reference plus the torch copy, both runs' caches and
    activations. `reference` is how the reference holds its weights: "float32" in RAM (shared
    with torch on the CPU in float32), or the checkpoint's own narrow dtype, memory-mapped and
    widened as used (float32 compute on the exact weights; file pages, shared with torch on the
    CPU when torch computes in that dtype)."""
    mapped = reference != "float32"
    ref = estimate(cfg, "numpy", reference, "cpu", disk_dtype, text_tokens)
    twin = estimate(cfg, "torch", dtype, device, disk_dtype, text_tokens)
    if device != "cpu":
        return Need(ram=dict(ref.ram, runtime=twin.ram["runtime"]), gpu=twin.gpu, file=ref.file)
    ram = dict(ref.ram, runtime=twin.ram["runtime"])  # torch's imports and tokenizer: one run
    shared = dtype == (disk_dtype if mapped else "float32")
    if not shared:  # a second copy of the weights, in torch's dtype
        ram["torch weights"] = twin.ram["weights"]
    ram["torch run"] = sum(_run(cfg, "torch", dtype, text_tokens, 1).values())
    return Need(ram=ram, file=ref.file)
