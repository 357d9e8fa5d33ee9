"""Test fixtures shipped with the package: tiny tokenizers and checkpoints in the exact HF layout."""
