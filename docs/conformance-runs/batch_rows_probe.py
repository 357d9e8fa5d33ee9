"""Each row of a left-padded batch against the same row run alone, by the same release.

    /work/peers/tf-VERSION/bin/python docs/conformance-runs/batch_rows_probe.py MODEL_DIR IMAGE_DIR

Runs in a past transformers release's own environment through the legacy adapter
(npgemma/compare/adapters/transformers_legacy_adapter.py): the three rows of conform's batch case
(images image-rgb/-other/-gray.png from a `conform --workdir`, all converted to RGB so that no
grey-image fault enters). A row the padding leaves alone differs from itself by 0; a fault of
the padded path shows as a difference on the padded rows, in the prompt logits (a mask fault
in the prefill) or only in the decode steps (a decode-time fault). No npgemma involved.
"""

import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "npgemma", "compare", "adapters"))
import transformers_legacy_adapter as adapter  # noqa: E402

ROWS = (("image-rgb.png", "caption en"), ("image-other.png", "answer en what is in the image ?"),
        ("image-gray.png", "detect cat ; dog"))


def main(model_dir: str, image_dir: str) -> None:
    import transformers

    images = [Image.open(os.path.join(image_dir, name)).convert("RGB") for name, _ in ROWS]
    prompts = [prompt for _, prompt in ROWS]
    batch = adapter.run(model_dir, images, prompts, max_new_tokens=6)
    longest = max(len(b["input_ids"]) for b in batch)
    print(f"transformers {transformers.__version__}, {os.path.basename(model_dir)}")
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        alone, row = adapter.run(model_dir, image, prompt, max_new_tokens=6), batch[i]
        prompt_diff = float(np.abs(row["logits"] - alone["logits"]).max())
        n = min(len(row["step_logits"]), len(alone["step_logits"]))
        steps = [round(float(np.abs(row["step_logits"][k] - alone["step_logits"][k]).max()), 3)
                 for k in range(n)]
        print(f"row {i} ({longest - len(row['input_ids'])} pad tokens): prompt logits "
              f"{prompt_diff:.3g} off the row alone; decode steps {steps}; tokens in the batch "
              f"{row['token_ids']}, alone {alone['token_ids']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
