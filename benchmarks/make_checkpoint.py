#!/usr/bin/env python
"""Write a full-size *random* PaliGemma checkpoint in the exact Hugging Face hub layout.

    python benchmarks/make_checkpoint.py NAME OUT_DIR [--seed S] [--shard-size-gb 2]
                                         [--dtype bfloat16|float32]
    python benchmarks/make_checkpoint.py --list

For benchmarks and load tests only (the output is never committed). NAME is one of the real
release names (`paligemma-3b-pt-224`, `paligemma2-10b-pt-448`, ...); the folder gets what the hub
repository holds:

* `config.json`: the minimal hub style (most fields come from transformers' defaults),
* `model-0000i-of-0000N.safetensors` shards of about `--shard-size-gb` GB (10^9 bytes, as HF
  counts) with `model.safetensors.index.json`, or a single `model.safetensors` when everything
  fits one shard; safetensors metadata `{"format": "pt"}`; hub key layout
  (`vision_tower.vision_model.*`, `multi_modal_projector.linear.*`, `language_model.model.*`,
  no `lm_head`: it is tied to the embedding),
* `preprocessor_config.json`, `generation_config.json` and `tokenizer.json` (the latter from
  `npgemma.synthetic.tokenizer.write_tokenizer`, with the real special-token ids).

Values are cheap but sensible: one seed-dependent pool of a few million N(0, 1) draws, scaled per
tensor (LayerNorm weights ~1, RMSNorm weights ~0 as they are used as 1 + w, linear weights
N(0, 1/fan_in), embeddings N(0, 0.02^2), biases small) and copied in 1M-value slices from
seed- and name-dependent offsets. A tensor's values depend only on (seed, dtype, name, shape),
not on the shard size. Activations stay finite through all layers; the logits are finite.

Streamed: one shard is in memory at a time (peak RSS about one shard plus ~100 MB).

Importable by path (benchmarks/ is not a package):

    spec = importlib.util.spec_from_file_location("make_checkpoint", "benchmarks/make_checkpoint.py")
    mc = importlib.util.module_from_spec(spec); spec.loader.exec_module(mc)
    mc.write_random_checkpoint("paligemma-3b-pt-224", "/tmp/pg1")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm import tqdm

# --------------------------------------------------------------------------------------------
# The real configurations, as the hub's config.json files write them.
# --------------------------------------------------------------------------------------------

VOCAB_SIZE = 257216          # 256000 Gemma + 1024 <loc> + 128 <seg> + <image>, padded to 257216
IMAGE_TOKEN_INDEX = 257152
PATCH_SIZE = 14
IMAGE_SIZES = (224, 448, 896)

# SigLIP So400m/14 (all releases).
_VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
               num_hidden_layers=27)

# PaliGemma 2 decoders (Gemma-2): the PG2 release name's size -> decoder shape.
_PG2_TEXT = {
    "3b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
               num_attention_heads=8, num_key_value_heads=4, head_dim=256,
               query_pre_attn_scalar=256, num_positions=256),
    "10b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                query_pre_attn_scalar=256, num_positions=1024),
    "28b": dict(hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                query_pre_attn_scalar=144, num_positions=4096),
}


def _num_image_tokens(image_size: int) -> int:
    return (image_size // PATCH_SIZE) ** 2


def _vision_config(image_size: int, **extra) -> dict:
    """The hub files' vision_config: So400m/14 sizes plus `extra`, keys sorted as the hub writes
    them, `image_size` only when not SiglipVisionConfig's default 224 (the hub omits it)."""
    vision = {"intermediate_size": _VISION["intermediate_size"],
              "model_type": "siglip_vision_model",
              "num_attention_heads": _VISION["num_attention_heads"],
              "num_hidden_layers": _VISION["num_hidden_layers"],
              "num_image_tokens": _num_image_tokens(image_size), "patch_size": PATCH_SIZE,
              "vision_use_head": False, **extra}
    if image_size != 224:
        vision["image_size"] = image_size
    return {"hidden_size": _VISION["hidden_size"], **dict(sorted(vision.items()))}


def _pg1_config(image_size: int) -> dict:
    """google/paligemma-3b-pt-{224,448,896}/config.json (the weights there are float32)."""
    n = _num_image_tokens(image_size)
    vision = _vision_config(image_size, projection_dim=2048,
                            projector_hidden_act="gelu_fast")  # present in the hub file, unused
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "bos_token_id": 2,
        "eos_token_id": 1,
        "hidden_size": 2048,
        "ignore_index": -100,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "model_type": "paligemma",
        "pad_token_id": 0,
        "projection_dim": 2048,
        "text_config": {
            "hidden_size": 2048,
            "intermediate_size": 16384,
            "model_type": "gemma",
            "num_attention_heads": 8,
            "num_hidden_layers": 18,
            "num_image_tokens": n,
            "num_key_value_heads": 1,
            "torch_dtype": "float32",
            "vocab_size": VOCAB_SIZE,
        },
        "torch_dtype": "float32",
        "transformers_version": "4.41.0.dev0",
        "vision_config": vision,
    }


def _pg2_config(size: str, image_size: int) -> dict:
    """google/paligemma2-{3b,10b,28b}-pt-{224,448,896}/config.json (bfloat16 weights).

    Like the hub files (written by transformers' convert_paligemma2_weights_to_hf.py): the
    top-level `hidden_size` 2048 is PaliGemmaConfig's meaningless default, `_vocab_size` and
    the vision `num_positions` (per model size, not per resolution) are ignored leftovers.
    """
    t = _PG2_TEXT[size]
    n = _num_image_tokens(image_size)
    text = {
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": t["hidden_size"],
        "intermediate_size": t["intermediate_size"],
        "model_type": "gemma2",
        "num_attention_heads": t["num_attention_heads"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_image_tokens": n,
        "num_key_value_heads": t["num_key_value_heads"],
        "query_pre_attn_scalar": t["query_pre_attn_scalar"],
        "sliding_window": 4096,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB_SIZE,
    }
    if t["head_dim"] != 256:  # Gemma2Config's default head_dim is 256
        text = {"head_dim": t["head_dim"], **text}
    vision = _vision_config(image_size, num_positions=t["num_positions"],
                            projection_dim=t["hidden_size"], torch_dtype="bfloat16")
    return {
        "_vocab_size": 257152,
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "bos_token_id": 2,
        "eos_token_id": 1,
        "hidden_size": 2048,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "model_type": "paligemma",
        "num_hidden_layers": t["num_hidden_layers"],
        "pad_token_id": 0,
        "projection_dim": t["hidden_size"],
        "text_config": text,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.47.0.dev0",
        "vision_config": vision,
    }


def _build_real_configs() -> dict[str, dict]:
    out = {}
    for s in IMAGE_SIZES:
        out[f"paligemma-3b-pt-{s}"] = _pg1_config(s)
    for size in _PG2_TEXT:
        for s in IMAGE_SIZES:
            out[f"paligemma2-{size}-pt-{s}"] = _pg2_config(size, s)
    return out


REAL_CONFIGS: dict[str, dict] = _build_real_configs()

# --------------------------------------------------------------------------------------------
# Tensor list (hub key layout, in the module order HF saves them).
# --------------------------------------------------------------------------------------------

_GEMMA_HEAD_DIM = 256  # GemmaConfig / Gemma2Config default


def _dims(config: dict) -> dict:
    """The sizes the tensor list needs, read from a hub config dict (REAL_CONFIGS style)."""
    v, t = config["vision_config"], config["text_config"]
    image_size = v.get("image_size", 224)
    patch = v["patch_size"]
    return dict(
        v_hidden=v["hidden_size"], v_mlp=v["intermediate_size"], v_layers=v["num_hidden_layers"],
        patch=patch, positions=(image_size // patch) ** 2, channels=v.get("num_channels", 3),
        gemma2=t["model_type"] == "gemma2", hidden=t["hidden_size"], mlp=t["intermediate_size"],
        layers=t["num_hidden_layers"], heads=t["num_attention_heads"],
        kv_heads=t["num_key_value_heads"], head_dim=t.get("head_dim", _GEMMA_HEAD_DIM),
        vocab=t["vocab_size"],
    )


def tensor_specs(name_or_config: str | dict) -> list[tuple[str, tuple[int, ...]]]:
    """[(hub key, shape)] for a real name (or a hub config dict), in HF's save order."""
    config = REAL_CONFIGS[name_or_config] if isinstance(name_or_config, str) else name_or_config
    d = _dims(config)
    V, M = d["v_hidden"], d["v_mlp"]
    specs: list[tuple[str, tuple[int, ...]]] = []
    vp = "vision_tower.vision_model."
    specs += [
        (vp + "embeddings.patch_embedding.weight", (V, d["channels"], d["patch"], d["patch"])),
        (vp + "embeddings.patch_embedding.bias", (V,)),
        (vp + "embeddings.position_embedding.weight", (d["positions"], V)),
    ]
    for i in range(d["v_layers"]):
        p = f"{vp}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            specs += [(f"{p}self_attn.{proj}.weight", (V, V)), (f"{p}self_attn.{proj}.bias", (V,))]
        specs += [(p + "layer_norm1.weight", (V,)), (p + "layer_norm1.bias", (V,)),
                  (p + "mlp.fc1.weight", (M, V)), (p + "mlp.fc1.bias", (M,)),
                  (p + "mlp.fc2.weight", (V, M)), (p + "mlp.fc2.bias", (V,)),
                  (p + "layer_norm2.weight", (V,)), (p + "layer_norm2.bias", (V,))]
    specs += [(vp + "post_layernorm.weight", (V,)), (vp + "post_layernorm.bias", (V,))]

    H = d["hidden"]
    specs += [("multi_modal_projector.linear.weight", (H, V)),
              ("multi_modal_projector.linear.bias", (H,))]

    lp = "language_model.model."
    specs.append((lp + "embed_tokens.weight", (d["vocab"], H)))
    q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    norms = ["input_layernorm", "post_attention_layernorm"]
    if d["gemma2"]:
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(d["layers"]):
        p = f"{lp}layers.{i}."
        specs += [(p + "self_attn.q_proj.weight", (q, H)), (p + "self_attn.k_proj.weight", (kv, H)),
                  (p + "self_attn.v_proj.weight", (kv, H)), (p + "self_attn.o_proj.weight", (H, q)),
                  (p + "mlp.gate_proj.weight", (d["mlp"], H)),
                  (p + "mlp.up_proj.weight", (d["mlp"], H)),
                  (p + "mlp.down_proj.weight", (H, d["mlp"]))]
        specs += [(f"{p}{n}.weight", (H,)) for n in norms]
    specs.append((lp + "norm.weight", (H,)))
    return specs


def count_parameters(name_or_config: str | dict) -> int:
    return sum(math.prod(shape) for _, shape in tensor_specs(name_or_config))


_PG1_224_PARAMETERS = 2_923_466_480
if count_parameters("paligemma-3b-pt-224") != _PG1_224_PARAMETERS:
    raise AssertionError(f"paligemma-3b-pt-224 has {count_parameters('paligemma-3b-pt-224'):,} "
                         f"parameters, expected {_PG1_224_PARAMETERS:,}")

# --------------------------------------------------------------------------------------------
# Cheap random values.
# --------------------------------------------------------------------------------------------

_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
_POOL = 1 << 22    # 4M unit-normal draws per seed
_CHUNK = 1 << 20   # copied in slices of 1M values


def _init(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor, from its hub key and shape."""
    leaf = name.rsplit(".", 2)
    module, kind = leaf[-2], leaf[-1]
    if name.startswith("language_model.") and kind == "weight" and len(shape) == 1:
        return 0.0, 0.02                          # Gemma RMSNorm: used as (1 + w)
    if "norm" in module:                          # SigLIP LayerNorm (layer_norm1/2, post_layernorm)
        return (1.0, 0.02) if kind == "weight" else (0.0, 0.02)
    if kind == "bias":
        return 0.0, 0.02
    if module in ("embed_tokens", "position_embedding"):
        return 0.0, 0.02
    fan_in = math.prod(shape[1:])                 # Linear [out, in]; conv OIHW
    return 0.0, 1.0 / math.sqrt(fan_in)


class _Filler:
    """Fills tensors from one seed-dependent pool of N(0, 1) values, scaled per tensor."""

    def __init__(self, seed: int, dtype: str):
        self.seed = seed
        self.dtype = _DTYPES[dtype]
        self.unit = np.random.default_rng(seed).standard_normal(_POOL, dtype=np.float32)
        self.scaled: dict[tuple[float, float], np.ndarray] = {}

    def _pool(self, mean: float, std: float) -> np.ndarray:
        key = (mean, std)
        if key not in self.scaled:
            pool = self.unit * np.float32(std)
            if mean:
                pool += np.float32(mean)
            self.scaled[key] = pool.astype(self.dtype)
        return self.scaled[key]

    def fill(self, name: str, out: np.ndarray) -> np.ndarray:
        pool = self._pool(*_init(name, out.shape))
        flat = out.reshape(-1)
        n = flat.size
        starts = range(0, n, _CHUNK)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        offsets = rng.integers(0, _POOL - _CHUNK + 1, size=len(starts))
        for start, off in zip(starts, offsets):
            m = min(_CHUNK, n - start)
            flat[start:start + m] = pool[off:off + m]
        return out

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return self.fill(name, np.empty(shape, dtype=self.dtype))


def random_tensor(name: str, shape: tuple[int, ...], seed: int = 0,
                  dtype: str = "bfloat16") -> np.ndarray:
    """One tensor exactly as write_random_checkpoint writes it (for checks; builds a pool)."""
    return _Filler(seed, dtype).tensor(name, tuple(shape))


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------

def _plan_shards(specs, itemsize: int, max_bytes: int) -> list[list[tuple[str, tuple]]]:
    """HF's greedy split: a new shard when the next tensor would overflow the current one."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def _preprocessor_config(image_size: int) -> dict:
    return {
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_seq_length": _num_image_tokens(image_size),
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "PaliGemmaProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }


def _write_json(path: Path, obj: dict, sort_keys: bool = False) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def _write_tokenizer(out_dir: Path) -> None:
    try:
        from npgemma.synthetic.tokenizer import write_tokenizer
    except ModuleNotFoundError as e:
        if e.name not in ("npgemma", "npgemma.synthetic", "npgemma.synthetic.tokenizer"):
            raise
        repo = str(Path(__file__).resolve().parents[1])
        if e.name == "npgemma" and repo not in sys.path:  # run as a script from a checkout
            sys.path.insert(0, repo)
            return _write_tokenizer(out_dir)
        warnings.warn(f"{e.name} is not available: no tokenizer.json written to {out_dir}",
                      stacklevel=2)
        return
    write_tokenizer(out_dir, full=True)


def shrunk(config: dict, n: int) -> dict:
    """`config` with every width ÷ n (heads kept: 2 in the vision tower), 2 layers per tower and
    the real vocabulary: the same files, keys and config fields in a few MB (a smoke run)."""
    config = json.loads(json.dumps(config))
    t, v = config["text_config"], config["vision_config"]
    head_dim = t.get("head_dim", _GEMMA_HEAD_DIM) // n
    t.update(hidden_size=t["hidden_size"] // n, intermediate_size=t["intermediate_size"] // n,
             num_hidden_layers=2, head_dim=head_dim)
    if "query_pre_attn_scalar" in t:
        t["query_pre_attn_scalar"] = head_dim
    v.update(hidden_size=2 * (v["hidden_size"] // (2 * n)),
             intermediate_size=v["intermediate_size"] // n, num_attention_heads=2, num_hidden_layers=2)
    v["projection_dim"] = config["projection_dim"] = t["hidden_size"]
    config["hidden_size"] = t["hidden_size"]
    return config


def write_random_checkpoint(name: str, out_dir: str | os.PathLike, seed: int = 0,
                            dtype: str = "bfloat16", shard_size_gb: float = 2.0,
                            progress: bool = True, shrink: int = 1) -> Path:
    """Write the random checkpoint `name` into `out_dir` (created) and return its path
    (`shrink` > 1: `shrunk(config, shrink)`, for a smoke run)."""
    from safetensors.numpy import save_file

    if name not in REAL_CONFIGS:
        raise ValueError(f"unknown checkpoint name {name!r}; known: {', '.join(REAL_CONFIGS)}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Leftovers of an earlier run with another shard count would confuse loaders.
    for old in [*out.glob("model-*-of-*.safetensors"), out / "model.safetensors",
                out / "model.safetensors.index.json"]:
        if old.is_file():
            old.unlink()

    config = json.loads(json.dumps(REAL_CONFIGS[name]))
    if shrink > 1:
        config = shrunk(config, shrink)
    config["torch_dtype"] = dtype
    for sub in ("text_config", "vision_config"):
        if "torch_dtype" in config[sub]:
            config[sub]["torch_dtype"] = dtype
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {
        "_from_model_config": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "transformers_version": config["transformers_version"]})
    _write_json(out / "preprocessor_config.json",
                _preprocessor_config(config["vision_config"].get("image_size", 224)))
    _write_tokenizer(out)

    file_mode = (out / "config.json").stat().st_mode & 0o777
    specs = tensor_specs(config)
    if name == "paligemma-3b-pt-224" and shrink == 1:
        assert sum(math.prod(s) for _, s in specs) == _PG1_224_PARAMETERS
    filler = _Filler(seed, dtype)
    itemsize = filler.dtype.itemsize
    shards = _plan_shards(specs, itemsize, int(shard_size_gb * 1e9))
    total_bytes = sum(math.prod(s) for _, s in specs) * itemsize
    n = len(shards)
    files = (["model.safetensors"] if n == 1 else
             [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    weight_map = {}
    # The same bar as npgemma's (npgemma/cli/progress.py): stderr, only on a terminal.
    with tqdm(total=total_bytes, desc=f"writing {name}", unit="B", unit_scale=True,
              file=sys.stderr, disable=None if progress else True, leave=False) as bar:
        for shard, fname in zip(shards, files):
            tensors = {key: filler.tensor(key, shape) for key, shape in shard}
            save_file(tensors, out / fname, metadata={"format": "pt"})
            os.chmod(out / fname, file_mode)  # safetensors creates 0600; match config.json's mode
            bar.update(sum(t.nbytes for t in tensors.values()))
            del tensors
            weight_map.update({key: fname for key, _ in shard})
    if n > 1:
        _write_json(out / "model.safetensors.index.json",
                    {"metadata": {"total_size": total_bytes}, "weight_map": weight_map},
                    sort_keys=True)
    if progress:
        params = total_bytes // itemsize
        print(f"[make_checkpoint] {name}: {params:,} parameters, {total_bytes:,} bytes {dtype}, "
              f"{n} file(s), {time.perf_counter() - t0:.1f} s -> {out}",
              file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="a real release name (see --list)")
    ap.add_argument("out_dir", nargs="?", help="folder to write (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size-gb", type=float, default=2.0)
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16")
    ap.add_argument("--list", action="store_true", help="list the names with their sizes")
    ap.add_argument("--shrink", type=int, default=1, metavar="N",
                    help="every width ÷ N and 2 layers per tower, same keys and files (a smoke run "
                         "of a few MB; not the release's size)")
    ap.add_argument("--record", metavar="FILE",
                    help="with --list: write the sizes with the machine, versions and this command "
                         "(benchmarks/record.py)")
    args = ap.parse_args(argv)
    if args.list:
        itemsize = _DTYPES[args.dtype].itemsize
        sizes = {}
        for name in REAL_CONFIGS:
            p = count_parameters(name)
            sizes[name] = {"parameters": p, "size_gb": p * itemsize / 1e9}
            print(f"{name:24s} {p:>15,} parameters  {p * itemsize / 1e9:7.2f} GB {args.dtype}")
        if args.record:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from record import write

            write(args.record, "make_checkpoint.py", {"dtype": args.dtype, "checkpoints": sizes}, argv)
        return 0
    if not args.name or not args.out_dir:
        ap.error("NAME and OUT_DIR are required (or --list)")
    if args.name not in REAL_CONFIGS:
        ap.error(f"unknown name {args.name!r}; choose from: {', '.join(REAL_CONFIGS)}")
    if args.shard_size_gb <= 0:
        ap.error("--shard-size-gb must be positive")
    t0 = time.perf_counter()
    out = write_random_checkpoint(args.name, args.out_dir, seed=args.seed, dtype=args.dtype,
                                  shard_size_gb=args.shard_size_gb, shrink=args.shrink)
    p = (count_parameters(args.name) if args.shrink == 1 else
         sum(math.prod(s) for _, s in tensor_specs(json.loads((out / "config.json").read_text()))))
    print(f"{args.name}: {p:,} parameters, {p * _DTYPES[args.dtype].itemsize:,} bytes "
          f"({args.dtype}), {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
