"""`npgemma parity` and `npgemma conform`: another PaliGemma implementation vs npgemma's NumPy
reference.

against.py (`parity --against`: stage by stage), conform.py (`conform`: the whole case set, one
table), stages.py (numpy vs npgemma's torch backend, stage by stage), tolerances.py (the one
tolerance table and comparison), adapters.py (the contract, resolving SPEC, the torch adapter),
hf.py (transformers), openai.py (an OpenAI-compatible server), remote.py (an adapter in another
Python), peers/ (keras-hub, mlx-vlm), reference.py (npgemma's side), deviations.py +
replacements.py + swap.py (the known traps, swapped into the reference), pixels.py (the known
preprocessing traps), diagnose.py (`--diagnose`: which trap explains the difference).
"""
