"""`npgemma tiny-checkpoint DIR`: a tiny random PaliGemma checkpoint, to try `--model DIR`,
`npgemma parity` and `npgemma conform` without downloading one.

The folder is what a Hugging Face PaliGemma repository holds, in its layout (the Hub's key
names, config.json, preprocessor_config.json, tokenizer.json and tokenizer.model), written by
the same writers the test suite and `npgemma conform`'s cases use (`npgemma.synthetic`), plus an
example image. The weights are random: the answers are gibberish, but every stage runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from PIL import Image

from ..checkpoint.config_json import load_config
from ..checkpoint.estimate import num_params
from ..errors import InputError
from ..synthetic.checkpoint import tiny_config, write_checkpoint
from ..synthetic.random_model import example_image


def run(args) -> int:
    folder = Path(args.dir)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a folder that is not empty" if folder.is_dir() else "a file"
        raise InputError(f"tiny-checkpoint: {folder} is {what}; give a new or empty folder "
                         "(nothing is overwritten)")
    try:
        # decisive: the layers, not the embedding alone, decide each token, so a wrong
        # implementation answers differently (the weights conform's cases use)
        write_checkpoint(folder, tiny_config(text="gemma2" if args.gemma == 2 else "gemma"),
                         layout="hub", seed=args.seed, decisive=True, preprocessor=True,
                         sentencepiece=True)
        Image.fromarray(example_image()).save(folder / "example.png")
    except OSError as e:
        raise InputError(f"tiny-checkpoint: cannot write {folder} ({e.strerror or e})") from None
    params = num_params(load_config(folder))
    size = sum(p.stat().st_size for p in folder.iterdir())
    d, image = shlex.quote(str(folder)), shlex.quote(str(folder / "example.png"))
    print(f"wrote a tiny random PaliGemma {'2 ' if args.gemma == 2 else ''}checkpoint to "
          f"{folder}: {params:,} parameters, {size / 1e6:.1f} MB, and {folder / 'example.png'} "
          "(random weights: expect gibberish answers)")
    print("try:")
    print(f"  npgemma generate --model {d} --image {image} --prompt 'caption en'")
    print(f"  npgemma parity --model {d} --image {image} --prompt 'caption en'")
    print(f"  npgemma conform --model {d} --cases 'model:*' --against torch")
    return 0

