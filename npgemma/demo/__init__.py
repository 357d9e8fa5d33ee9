"""The bundled demo model: a real, trained PaliGemma 2 of 4.5 M parameters, and how it was made.

    model/, vae/     the shipped weights (package data): the model folder and its mask VQ-VAE
    scenes.py        procedurally drawn scenes with ground truth (boxes, masks)
    tasks.py         PaliGemma-style prompts and answers over a scene
    masks.py         a scene object's mask -> the demo VQ-VAE's <seg> codes
    bundle.py        the model's config and tokenizer, and writing a model folder
    train.py         training through npgemma's own torch functions; ship.py: make it the bundled one
    train_vqvae.py   training the demo VQ-VAE
    evaluate.py      accuracy per task on fresh scenes; run.py: `npgemma demo`

Where the shipped files lie is `npgemma/checkpoint/bundled.py` (the loader needs it).
"""
