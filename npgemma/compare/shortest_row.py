"""A batch fault of the decode loop: it starts at the shortest row's end, so a longer row's
prompt tail is run again one token at a time, causally (`batch-prompt-tail-causal`).

keras-hub's `CausalLM.generate_step` (its PaliGemma's too) seeds the cache with one forward
pass over the whole right-padded batch (every prompt token sees the whole prompt: the prefix is
bidirectional), then starts its sampler at `index = min(row_lengths)`: each step runs the token
at index - 1 through `call_with_cache` with the causal mask only, writes its keys and values
over the seeded ones, and keeps a row's own prompt token where its padding mask says so. A row
longer than the shortest therefore has its prompt tokens from the shortest row's last one on
recomputed causally (they no longer see the rest of their prefix), and its first generated
token is read from the last of them. Slots before that keep the seeded, bidirectional values.
Its forward pass (`model(x)`) is not affected: the row's prompt logits match, its tokens do not.
"""

from __future__ import annotations

import numpy as np

from .. import paligemma
from ..generation.slots import Slots
from .diagnose import fit
from .reference import Forward, teacher_forced
from .trap import Trap


def tail_causal(params, cfg, input_ids, pixel_values, tokens, start: int) -> Forward:
    """npgemma's reference run of one row as such a decode loop runs it: the prompt prefilled
    as a bidirectional prefix (its logits: what the forward pass gives), then the cache cut back
    to `start` slots (the first slot the loop recomputes: the shortest row's last prompt slot)
    and slots start.. run again as causal queries, then `tokens` decoded. step_logits[0] is the
    recomputed last prompt slot's (what the first generated token is read from)."""
    n = len(input_ids)
    if not 0 < start < n:
        raise ValueError(f"the loop's first slot {start} is not inside the prompt (1..{n - 1})")
    ids = np.asarray(input_ids, np.int64)[None]  # [1, L]
    slots = Slots.prompt(np.ones((1, n), bool))
    cache = paligemma.init_cache(cfg, 1, n + len(tokens))
    feats = paligemma.encode_image(params, pixel_values[None].astype(np.float32), cfg)
    logits, cache = paligemma.forward(params, cfg, ids, slots.positions(), slots.masks(cfg, 0),
                                      image_features=feats, cache=cache)
    # the seeded keys of slots >= start are overwritten: recomputed as generated (causal) slots
    cache.length = start
    tail = Slots(slots.valid, np.arange(n)[None] < start)  # [1, L]: slots start.. not prefix
    # slots start.. hold text tokens only: the image features (slots < P) are never recomputed
    if start < cfg.num_image_tokens:
        raise ValueError(f"the loop's first slot {start} is an image slot")
    last, cache = paligemma.forward(params, cfg, ids[:, start:], tail.positions(start),
                                    tail.masks(cfg, start), cache=cache, last_only=True)
    steps = [last[0, -1]]
    for t in tokens:
        tail = tail.append()
        q = tail.length - 1
        step, cache = paligemma.forward(params, cfg, np.array([[t]], np.int64), tail.positions(q),
                                        tail.masks(cfg, q), cache=cache, last_only=True)
        steps.append(step[0, -1])
    return Forward(logits[0], np.stack(steps), None)


TRAP = Trap(
    "batch-prompt-tail-causal", "batch", "generation/slots.py: every prompt slot of a row is "
    "prefix (a decode loop starts at each row's own end)", "the implementation starts its "
    "decode loop at the shortest row's end (keras-hub's generate_step: index = "
    "min(row_lengths)), so this longer row's prompt tokens from there on are run again one at "
    "a time with the causal mask: they no longer see the rest of their prefix, and the first "
    "generated token is read from the last of them (its forward pass, the prompt logits, is "
    "unaffected)", "the reference run as the row with its cache cut back to the shortest row's "
    "last prompt slot and the tail recomputed as causal slots (shortest_row.tail_causal)",
    needs="a batch row longer than the shortest (or, past a window, any row), and a generated "
          "token")


def judge_row(i: int, report: dict, verdict, theirs, params, cfg, ids, pixels, forced,
              start: int, dtype: str):
    """Row i's verdict when `TRAP` explains it, else None. It explains when the row's greedy
    tokens are npgemma's picks with the trap in place and not without it, by the same measure
    and no farther on everything else compared (the prompt logits come from the forward pass,
    which the trap leaves alone: equally near)."""
    if theirs.token_ids is None or not forced:
        return None
    base = fit("npgemma", teacher_forced(params, cfg, ids, pixels, forced), theirs, forced, dtype)
    f = fit(TRAP.name, tail_causal(params, cfg, ids, pixels, forced, start), theirs, forced, dtype)
    if not (f.ok and f.picks > base.picks and not f.distance > base.distance):
        return None
    stages = [s for s in report["stages"] if not s["ok"]]
    width = [s for s in stages if s["stage"].endswith(" width")]
    cut = all("cut at image_token_index" in s["note"] for s in width)
    pix = verdict.pixels
    parts = [f"{s['stage']}: {s['note']}" for s in width]
    parts.append(f"matches npgemma with `{TRAP.name}` on its greedy tokens ({f.picks} of "
                 f"{f.tokens_total}; npgemma unchanged picks {base.picks}), its prompt logits "
                 + (f"to {f.distance:.2g}" if f.distance == f.distance else "not returned")
                 + f" — {TRAP.explain}")
    if pix:
        parts.append("the processor differs: " + pix["verdict"])
    explained = cut and (pix is None or pix["explained"]) and \
        all(s["stage"] != "input_ids" for s in stages)
    names = [TRAP.name] + (["vocab-cut-at-image-token"] if width and cut else [])
    return f"row {i}: " + "; ".join(parts), explained, names
