"""`npgemma parity --against`: another PaliGemma implementation vs npgemma's NumPy reference.

adapters.py (the contract, resolving SPEC, the torch adapter), hf.py (transformers), openai.py
(an OpenAI-compatible server), reference.py (npgemma's side), report.py (stage by stage),
deviations.py + replacements.py + swap.py (the known traps, swapped into the reference),
diagnose.py (`--diagnose`: which trap explains the difference).
"""
