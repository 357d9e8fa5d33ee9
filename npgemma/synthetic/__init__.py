"""Synthetic checkpoints: tiny tokenizers, configs, random weights, VQ-VAE files and Hugging
Face cache folders, written in the exact HF layout.

Product code writes with them (`npgemma conform`'s case set, `npgemma tiny-checkpoint`, the
bundled demo model's config and tokenizer in `demo/bundle.py`); the tests and the parity suite
use them as fixtures.
"""
