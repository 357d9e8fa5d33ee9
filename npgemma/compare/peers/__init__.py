"""Adapters for other PaliGemma implementations, each run in the peer's own environment by
`remote.py` (`--against keras-hub`, `--against mlx-vlm`, with `--python` naming that
environment's interpreter). Each file imports only NumPy, Pillow and its peer, and uses the
peer's own public loading and generation API, as its users run it."""
