"""keras-hub's batch `generate` against the same row alone, and against the row paired with
itself (a batch whose rows are all as long), by keras-hub only.

    /work/peers/keras-hub/bin/python docs/conformance-runs/keras_batch_probe.py MODEL_DIR IMAGE_DIR

Runs in keras-hub's own environment through its adapter (npgemma/compare/adapters/
keras_hub_adapter.py): the three rows of conform's batch case (image-rgb/-other/-third.png from
a `conform --workdir`, prompts of three lengths; keras-hub pads them on the right). For each
row: its prompt logits (the model's forward pass, `lm(x)`) in the batch against alone, and its
greedy tokens in the batch, alone, and in a batch of two copies of itself. keras-hub's sampler
starts at the shortest row's end (`index = min(row_lengths)` in `generate_step`): a row longer
than the shortest gets its prompt tail run again one token at a time, causally; two copies of
one row start at its own end. No npgemma involved.
"""

import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "npgemma", "compare", "adapters"))
import keras_hub_adapter as adapter  # noqa: E402

ROWS = (("image-rgb.png", "caption en"), ("image-other.png", "answer en what is in the image ?"),
        ("image-third.png", "detect cat ; dog"))


def main(model_dir: str, image_dir: str) -> None:
    import keras_hub

    images = [Image.open(os.path.join(image_dir, name)).convert("RGB") for name, _ in ROWS]
    prompts = [prompt for _, prompt in ROWS]
    batch = adapter.run(model_dir, images, prompts, max_new_tokens=6)
    print(f"keras-hub {keras_hub.__version__}, {os.path.basename(model_dir)}")
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        alone = adapter.run(model_dir, image, prompt, max_new_tokens=6)
        twice = adapter.run(model_dir, [image, image], [prompt, prompt], max_new_tokens=6)[0]
        row = batch[i]
        diff = float(np.abs(row["logits"] - alone["logits"]).max())
        print(f"row {i} ({len(row['input_ids'])} ids): prompt logits {diff:.2g} off the row "
              f"alone; tokens in the batch {row['token_ids']}, alone {alone['token_ids']}, "
              f"beside a copy of itself {twice['token_ids']}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
