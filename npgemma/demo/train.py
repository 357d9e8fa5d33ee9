"""Train the demo model: `python -m npgemma.demo.train --out checkpoints/demo [--device cuda]`.

The model is the torch backend's own functions (`npgemma.torch_backend.paligemma`), with
autograd through them: there is no second model definition, so what is trained is exactly what
both backends run. Data is drawn on the fly (`scenes.py`), seeded by (seed, step), so a resumed
run draws the same batches it would have drawn. The loss is PaliGemma's prefix-LM loss: the
whole prompt is the bidirectional prefix, and only the answer tokens (and the EOS) are scored.

AdamW (beta2 0.98, weight decay 0.01 on matrices), linear warmup then cosine decay. Every
`--eval-every` steps: greedy answers on fixed held-out scenes; every `--save-every` steps: the
training state (`state.pt`, resumable) and the checkpoint folder (`model/`, HF layout).

Fine-tuning: `--init-from DIR` starts from a trained HF-layout folder (its config.json sets the
sizes) instead of fresh weights, with a fresh optimizer; `--tasks` sets the task mix, e.g.
`--tasks segment=0.5,detect=0.2,caption=0.1,color=0.07,count=0.06,shape=0.07` to teach
`segment <shape>` while rehearsing the old tasks so they are not forgotten.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint.config_json import config_from_dict
from ..checkpoint.weights import expected_shapes, flatten, unflatten
from ..generation.processing import Processor
from ..generation.slots import Slots
from ..torch_backend import paligemma as tpg
from . import scenes
from .bundle import demo_config, demo_tokenizer, write_model
from .tasks import TASKS, make_task

TASK_WEIGHTS = {"caption": 0.25, "color": 0.15, "count": 0.1, "shape": 0.15, "detect": 0.35}


@dataclass
class Batch:
    input_ids: torch.Tensor     # int64[B, S]: prefix, answer, EOS, right padding
    positions: torch.Tensor     # int64[B, S]
    masks: dict                 # bool[B, S, S] per layer type
    pixel_values: torch.Tensor  # float32[B, 3, 64, 64]
    targets: torch.Tensor       # int64[B, S]: the next token, -100 where not scored


def make_processor(cfg) -> Processor:
    return Processor(demo_tokenizer(), image_size=cfg.vision_config.image_size,
                     num_image_tokens=cfg.num_image_tokens)


def draw_examples(rng: np.random.Generator, count: int, tasks=None, mix: dict | None = None):
    """`count` (scene, prompt, answer) triples, a fresh scene each, tasks drawn by `mix`
    (default TASK_WEIGHTS), restricted to `tasks` when given."""
    mix = TASK_WEIGHTS if mix is None else mix
    names = list(mix) if tasks is None else list(tasks)
    weights = np.array([mix[t] for t in names])
    out = []
    for task in rng.choice(names, size=count, p=weights / weights.sum()):
        scene = scenes.draw_scene(rng)
        out.append((scene, *make_task(scene, str(task), rng)))
    return out


def encode_batch(processor: Processor, cfg, examples, device) -> Batch:
    """Right-padded training rows `prefix + answer + <eos>`, with the prefix-LM masks."""
    rows, prefix_lens = [], []
    for _, prompt, answer in examples:
        prefix = processor.encode_prompt(prompt)
        answer_ids = processor.tokenizer.encode(answer, add_special_tokens=False).ids
        rows.append(np.concatenate([prefix, answer_ids, [cfg.eos_token_id]]).astype(np.int64))
        prefix_lens.append(len(prefix))
    b, s = len(rows), max(len(r) for r in rows)
    ids = np.full((b, s), cfg.pad_token_id, np.int64)
    valid = np.zeros((b, s), bool)
    targets = np.full((b, s), -100, np.int64)
    for i, (row, p) in enumerate(zip(rows, prefix_lens)):
        ids[i, :len(row)] = row
        valid[i, :len(row)] = True
        targets[i, p - 1:len(row) - 1] = row[p:]  # position t predicts token t + 1 of the answer
    # Right-padded rows: the prompt is the prefix, the answer causal (teacher forcing).
    slots = Slots(valid, valid & (np.arange(s)[None] < np.array(prefix_lens)[:, None]))
    pixels = np.stack([processor.preprocess_image(scene.image) for scene, _, _ in examples])
    as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return Batch(as_t(ids), as_t(slots.positions()), {k: as_t(m) for k, m in slots.masks(cfg).items()},
                 as_t(pixels), as_t(targets))


def loss_fn(params, cfg, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens, through the torch backend's forward."""
    features = tpg.encode_image(params, batch.pixel_values, cfg)
    logits, _ = tpg.forward(params, cfg, batch.input_ids, batch.positions, batch.masks, features)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=-100)


def init_weights(cfg, seed: int) -> dict[str, np.ndarray]:
    """Fresh weights: fan-in scaled matrices, residual outputs shrunk by depth, norms at identity
    (Gemma's RMSNorm multiplies by 1 + w, so w = 0; SigLIP's LayerNorm by w, so w = 1)."""
    rng = np.random.default_rng(seed)
    depth = 2 * (cfg.text_config.num_hidden_layers + cfg.vision_config.num_hidden_layers)
    out = {}
    for key, shape in expected_shapes(cfg).items():
        if key.endswith("bias") or (key.startswith("language_model") and "norm" in key):
            out[key] = np.zeros(shape, np.float32)
        elif "norm" in key:
            out[key] = np.ones(shape, np.float32)
        else:
            fan_in = shape[-1] if len(shape) == 2 else int(np.prod(shape[1:]))
            std = fan_in ** -0.5
            if key.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight", "fc2.weight")):
                std /= math.sqrt(depth / 2)
            if key.endswith(("embed_tokens.weight", "position_embedding.weight")):
                std = shape[-1] ** -0.5
            out[key] = (rng.standard_normal(shape) * std).astype(np.float32)
    return out


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class Trainer:
    """Parameters, optimizer and step; `save`/`load` make a run resumable exactly."""

    def __init__(self, cfg_dict: dict, args, device, init: dict[str, np.ndarray] | None = None):
        self.cfg_dict, self.cfg, self.args, self.device = cfg_dict, config_from_dict(cfg_dict), args, device
        self.mix = getattr(args, "mix", None) or TASK_WEIGHTS
        flat = init_weights(self.cfg, args.seed) if init is None else init
        self.flat = {k: torch.from_numpy(v).to(device).requires_grad_() for k, v in flat.items()}
        self.params = unflatten(self.flat)
        decay = [p for k, p in self.flat.items() if p.ndim >= 2 and "embedding" not in k]
        rest = [p for k, p in self.flat.items() if not (p.ndim >= 2 and "embedding" not in k)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
        self.step = 0
        self.processor = make_processor(self.cfg)

    def train_step(self) -> float:
        rng = np.random.default_rng([self.args.seed, self.step])
        examples = draw_examples(rng, self.args.batch, mix=self.mix)
        batch = encode_batch(self.processor, self.cfg, examples, self.device)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.step, self.args.steps, self.args.lr, self.args.warmup)
        loss = loss_fn(self.params, self.cfg, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.flat.values(), 1.0)
        self.opt.step()
        self.step += 1
        return float(loss.detach())

    def numpy_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.flat.items()}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "config": self.cfg_dict, "seed": self.args.seed,
                 "weights": {k: v.detach().cpu() for k, v in self.flat.items()},
                 "optimizer": self.opt.state_dict()}
        torch.save(state, out / "state.tmp")
        (out / "state.tmp").replace(out / "state.pt")
        write_model(out / "model", self.cfg_dict, self.numpy_weights(),
                    metadata={"npgemma_demo_step": str(self.step)})

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["config"] != self.cfg_dict:
            sys.exit(f"{path}: saved with another model config; pass the same sizes or a new --out")
        with torch.no_grad():
            for k, v in state["weights"].items():
                self.flat[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        self.step = state["step"]


def parse_mix(text: str) -> dict[str, float]:
    """`segment=0.5,detect=0.2,...` -> {task: weight}; every name one of `TASKS`."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if name not in TASKS or not sep:
            raise argparse.ArgumentTypeError(f"{part!r}: expected TASK=WEIGHT with TASK one of "
                                             f"{', '.join(TASKS)}")
        mix[name] = float(weight)
    if not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be >= 0 and not all 0")
    return mix


def init_from(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict, canonical flat float32 weights) of a trained HF-layout folder."""
    import json

    from ..checkpoint.weights import load_weights

    cfg_dict = json.loads((folder / "config.json").read_text())
    return cfg_dict, flatten(load_weights(folder, config_from_dict(cfg_dict)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m npgemma.demo.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("checkpoints/demo"), help="state + model folder")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--hidden-size", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-scenes", type=int, default=40, help="held-out scenes per task per eval")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="start from this trained model folder (fine-tuning; sizes from its config)")
    p.add_argument("--tasks", dest="mix", type=parse_mix, default=None, metavar="T=W,...",
                   help=f"task mix (default {','.join(f'{k}={v}' for k, v in TASK_WEIGHTS.items())})")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from tqdm import tqdm

    from .evaluate import evaluate

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    init = None
    if args.init_from is not None:
        cfg_dict, init = init_from(args.init_from)
    else:
        cfg_dict = demo_config(hidden_size=args.hidden_size, layers=args.layers,
                               vision_layers=args.vision_layers)
    trainer = Trainer(cfg_dict, args, torch.device(args.device), init)
    if args.resume and (args.out / "state.pt").exists():
        trainer.load(args.out / "state.pt")
    n = sum(int(p.numel()) for p in trainer.flat.values())
    bar = tqdm(total=args.steps, initial=trainer.step, disable=args.quiet or None, unit="step",
               desc=f"demo {n / 1e6:.2f}M params", dynamic_ncols=True, file=sys.stderr)
    smooth, start = None, time.time()
    log = open(args.out.mkdir(parents=True, exist_ok=True) or args.out / "train.log", "a")
    while trainer.step < args.steps:
        loss = trainer.train_step()
        smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}")
        if trainer.step % 50 == 0:
            print(f"step {trainer.step} loss {smooth:.4f} elapsed {time.time() - start:.0f}s",
                  file=log, flush=True)
        if trainer.step % args.save_every == 0 or trainer.step == args.steps:
            trainer.save(args.out)
        if trainer.step % args.eval_every == 0 or trainer.step == args.steps:
            with torch.no_grad():
                scores = evaluate(trainer.params, trainer.cfg, trainer.processor, "torch",
                                  args.device, args.eval_scenes, seed=10_000, tasks=list(trainer.mix))
            line = " ".join(f"{k} {v:.3f}" for k, v in scores.items())
            bar.write(f"step {trainer.step}: {line}")
            print(f"eval step {trainer.step}: {line}", file=log, flush=True)
    bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
