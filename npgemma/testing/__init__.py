"""Test fixtures shipped with the package: tiny tokenizers and checkpoints in the exact HF layout.

Also what the bundled demo model is built from (`demo/bundle.py` takes its config and tokenizer
builders from here), so these are not test-only code: they are the small, exact HF files.
"""
